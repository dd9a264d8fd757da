"""Region retrieval: region index, text/region search, the paper's retrieval evaluation and
caption-based clustering. The joint region-sentence embedding head it uses is part of the model
(:mod:`densecap.modeling.embedding`); its names are re-exported here."""
from densecap.modeling.embedding import EmbeddingHead, SentenceEncoder, build_embedding_head
from densecap.modeling.ranking_loss import ranking_loss, same_caption_mask

__all__ = ["EmbeddingHead", "SentenceEncoder", "build_embedding_head", "ranking_loss", "same_caption_mask"]
