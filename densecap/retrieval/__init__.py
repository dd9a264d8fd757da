"""Region retrieval (issue 7): joint region-sentence embedding, region index, text/region search,
the paper's retrieval evaluation and caption-based clustering. See /work/notes/retrieval_readme.md."""
from .embedding import EmbeddingHead, SentenceEncoder, build_embedding_head
from .losses import ranking_loss, same_caption_mask

__all__ = ["EmbeddingHead", "SentenceEncoder", "build_embedding_head", "ranking_loss", "same_caption_mask"]
