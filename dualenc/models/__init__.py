"""Model code: towers (BERT/MiniLM, DistilBERT, DeBERTa-v2/v3, T5) as pure Flax over HF-named
param trees, attention and CPU kernels, pooling, loading and saving model dirs."""
