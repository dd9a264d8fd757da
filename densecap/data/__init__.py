from .catalog import DatasetCatalog  # noqa: F401
from .image_io import ImageReadError, read_image, resize_longest_side  # noqa: F401
from .tokenizer import Vocabulary, tokenize  # noqa: F401
