"""FAISS indexes derived from the stored vectors (faiss is imported lazily)."""
