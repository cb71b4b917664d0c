"""Dataset readers: BEIR-layout corpora, queries, qrels and TREC runs."""
