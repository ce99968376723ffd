"""The names of a library's two vector collections (and of their indexes).

A leaf with no imports, so every layer can name a collection without loading FAISS: the index
module that used to define them imports faiss at module level."""

IMAGES, TEXTS = "images", "texts"
