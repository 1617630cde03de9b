"""CLIP-ITA library: catalogue generation and loading, training, evaluation and the search index."""
