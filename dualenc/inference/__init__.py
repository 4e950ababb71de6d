"""Inference: encoding (padded or packed), chunking, reranking, classification and their caches.

One owner per concern: `encode` embeds texts, `batching` tokenises and places encoding batches,
`packing` packs several texts per row, `chunking` splits long documents, `rerank` scores pairs with
a cross-encoder, `classify` turns cross-encoder logits into labels, and `corpus_cache` /
`rerank_cache` keep embeddings and scores between runs. Commands live at the package top.
"""
