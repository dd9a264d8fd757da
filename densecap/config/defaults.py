"""All configuration keys and their defaults, in one commented place.

Names follow detectron2 where the idea is the same (``MODEL.RPN.*``, ``SOLVER.*``, ``INPUT.*``,
``DATASETS.*``, ``TEST.*``, ``OUTPUT_DIR``). Defaults reproduce the original DenseCap (Lua/Torch,
Johnson et al. 2016) unless a comment says otherwise. A YAML file may only set keys that exist
here; an unknown key is an error naming it.
"""
from fvcore.common.config import CfgNode as _FvCfgNode


class CfgNode(_FvCfgNode):
    """fvcore's CfgNode: ``_BASE_`` inheritance, ``merge_from_list(["KEY", "VALUE", ...])``."""


_C = CfgNode()
_C.VERSION = 1

# --------------------------------------------------------------------------------------------
# MODEL
# --------------------------------------------------------------------------------------------
_C.MODEL = CfgNode()
_C.MODEL.META_ARCHITECTURE = "DenseCap"  # registry: DenseCap, ImageCaptioner
_C.MODEL.DEVICE = "cpu"  # "cpu" or "cuda"
# Full checkpoint to initialise from (a densecap .pth); empty = none.
_C.MODEL.WEIGHTS = ""
# Pixel statistics for RGB images in 0..255 (ImageNet).
_C.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
_C.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]

_C.MODEL.BACKBONE = CfgNode()
# registry: "vgg16" (relu5_3, stride 16), "resnet50_c4" (stride 16), "resnet50_fpn", "small_cnn"
_C.MODEL.BACKBONE.NAME = "vgg16"
# ImageNet initialisation: a torchvision weight enum name ("VGG16_Weights.IMAGENET1K_V1",
# "ResNet50_Weights.IMAGENET1K_V2") or a local .pth path; empty = random initialisation.
# No download happens at run time: torchvision names resolve through the local torch hub cache.
_C.MODEL.BACKBONE.WEIGHTS = ""
# Freeze the stem and the first N stages (the original never trains VGG conv1-conv2: 2). Applies
# when the backbone starts from trained weights: BACKBONE.WEIGHTS or a full checkpoint MODEL.WEIGHTS.
_C.MODEL.BACKBONE.FREEZE_AT = 2
# Normalisation inside the backbone: "" (as the network was defined), "FrozenBN", "BN", "GN".
_C.MODEL.BACKBONE.NORM = ""
# Width of the small CPU backbone (small_cnn only).
_C.MODEL.BACKBONE.WIDTH = 64
# Output stride of the small CPU backbone (small_cnn only): 8 (dilated context layers) or 16.
_C.MODEL.BACKBONE.STRIDE = 16
# small_cnn only: append the input's colour averaged over each stride x stride cell (3 channels)
# to the output features, so region codes always see colour (detection training alone makes
# learned features colour-invariant).
_C.MODEL.BACKBONE.RGB_SKIP = False

# The original-compatible model (META_ARCHITECTURE "DenseCapOriginal", backbone "vgg16_original";
# configs/densecap_vgg16_original.yaml, what converted Torch7 checkpoints use).
_C.MODEL.ORIGINAL = CfgNode()
# Output channels of the five VGG-16 conv blocks (the original's; narrow test models differ).
_C.MODEL.ORIGINAL.CONV_WIDTHS = [64, 128, 256, 512, 512]
# Anchor centres (x0, y0, sx, sy): x = x0 + sx * column, 1-based input pixels (the original's
# net_utils.compute_field_centers for VGG-16 conv5).
_C.MODEL.ORIGINAL.FIELD_CENTERS = [8.5, 8.5, 16.0, 16.0]

_C.MODEL.FPN = CfgNode()
_C.MODEL.FPN.OUT_CHANNELS = 256

_C.MODEL.RPN = CfgNode()
_C.MODEL.RPN.HEAD_CHANNELS = 256  # 3x3 conv 512->256 in the original
# Anchors as (w, h) pairs in input pixels (the original's 12). For FPN, ANCHOR_SIZES_FPN gives
# per-level square sizes and ASPECT_RATIOS the shapes.
_C.MODEL.RPN.ANCHORS = [
    [45, 90], [90, 45], [64, 64], [90, 180], [180, 90], [128, 128],
    [181, 362], [362, 181], [256, 256], [362, 724], [724, 362], [512, 512],
]
_C.MODEL.RPN.ANCHOR_SIZES_FPN = [[32], [64], [128], [256], [512]]
_C.MODEL.RPN.ASPECT_RATIOS = [0.5, 1.0, 2.0]
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5
# [negative below, positive above]
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]
# The original measures IoU between *predicted* boxes (anchor + deltas) and GT when sampling.
_C.MODEL.RPN.MATCH_PREDICTED_BOXES = True
# Exclude boxes that cross the image border from training (the original does).
_C.MODEL.RPN.IGNORE_CROSS_BOUNDARY = True
# Test-time proposals: the best PRE_NMS_TOPK_TEST boxes (per level with FPN) enter NMS 0.7, the
# best POST_NMS_TOPK_TEST survive. Training has no proposal step: as in the original, the
# recognition network reads the RPN's sampled boxes directly.
_C.MODEL.RPN.NMS_THRESH = 0.7
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 6000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.LOSS_WEIGHT_CLS = 0.1
_C.MODEL.RPN.LOSS_WEIGHT_BOX = 0.05
_C.MODEL.RPN.SMOOTH_L1_BETA = 1.0
# L2 pull on the RPN deltas (the original's 5e-5).
_C.MODEL.RPN.DELTA_L2_WEIGHT = 5e-5

_C.MODEL.ROI = CfgNode()
# "bilinear": the original's differentiable bilinear sampler (gradients reach box coordinates);
# "roi_align": torchvision RoIAlign, for comparison.
_C.MODEL.ROI.SAMPLER = "bilinear"
_C.MODEL.ROI.POOLER_RESOLUTION = 7
# Let recognition losses flow into the box coordinates (and so into the RPN regressor).
_C.MODEL.ROI.BACKPROP_BOXES = True
# Recognition network: two FC layers (fc6/fc7 of VGG: 4096).
_C.MODEL.ROI.FC_DIM = 4096
_C.MODEL.ROI.DROPOUT = 0.5
# Boxes sampled per image for the recognition network during training (the RPN's sample).
_C.MODEL.ROI.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.ROI.POSITIVE_FRACTION = 0.5
_C.MODEL.ROI.LOSS_WEIGHT_CLS = 0.1
_C.MODEL.ROI.LOSS_WEIGHT_BOX = 0.1
_C.MODEL.ROI.SMOOTH_L1_BETA = 1.0
# Final NMS on refined boxes ranked by objectness.
_C.MODEL.ROI.NMS_THRESH_TEST = 0.3

# Visual context and joint inference for the region captioner (Yang et al., CVPR 2017), off by
# default (the original recipe). CONTEXT: "" (none), "global" (the whole image's code), "union" (the
# code of the region's box enlarged CONTEXT_UNION_SCALE times: the region and its neighbours), or
# both ("global,union"); the caption decoder then reads [region; contexts] (concatenation). See
# densecap/modeling/context.py.
_C.MODEL.ROI_HEADS = CfgNode()
_C.MODEL.ROI_HEADS.CONTEXT = ""
_C.MODEL.ROI_HEADS.CONTEXT_UNION_SCALE = 2.0
# test time: the unions of pairs of each image's N best detections are scored like proposals
# and added to its detections (regions showing two objects in a relation); 0 = off (the original)
_C.MODEL.ROI_HEADS.PAIR_BOXES = 0
# with PAIR_BOXES: the added pair regions' scores (their objectness) times this. Below 1 ranks them
# after the single detections of the same objectness: few of the pairs an image offers are
# annotated, so a pair region is a true positive less often than a detection is
_C.MODEL.ROI_HEADS.PAIR_SCORE_SCALE = 1.0
# with PAIR_BOXES: a relation geometry model (relations.json, `tools/retrieve.py fit-relations`);
# each pair region's caption is then composed from its two parts' captions and the relation the
# geometry and the language model find best (densecap/modeling/pair_captions.py); "" = off
_C.MODEL.ROI_HEADS.PAIR_RELATIONS = ""
# Joint inference: the caption decoder's state after a region's caption predicts a further box
# refinement (loss_box_joint, weighted like loss_box); at test time each detection's box moves after
# it is captioned. See densecap/modeling/joint_inference.py.
_C.MODEL.ROI_HEADS.JOINT_INFERENCE = False

_C.MODEL.CAPTION = CfgNode()
# registry of region caption decoders: "lstm" (the original), "gru"
_C.MODEL.CAPTION.DECODER = "lstm"
_C.MODEL.CAPTION.EMBED_SIZE = 512
_C.MODEL.CAPTION.HIDDEN_SIZE = 512
_C.MODEL.CAPTION.NUM_LAYERS = 1
_C.MODEL.CAPTION.DROPOUT = 0.0
# Longest caption in words (END not counted; longer GT captions are dropped at preparation); the
# generated captions have at most this many words. MODEL.IMAGE_CAPTION.MAX_TOKENS means the same.
_C.MODEL.CAPTION.MAX_TOKENS = 15
_C.MODEL.CAPTION.LOSS_WEIGHT = 1.0
# Optional GloVe/word2vec text file to initialise word embeddings from.
_C.MODEL.CAPTION.WORD_VECTORS = ""
# Append the projected region code to the LSTM input at every step (not only at step 0 as the
# original): a direct path from the region to each word; grounds colour/shape words much faster.
_C.MODEL.CAPTION.CODE_EVERY_STEP = False

# Whole-image caption head (densecap/modeling/image_caption): Show and Tell (NIC) and Show,
# Attend and Tell (soft / hard attention). Used by the standalone "ImageCaptioner"
# meta-architecture; at inference it runs alongside a DenseCap model
# (tools/infer.py --image-caption --caption-weights CKPT, densecap/modeling/composite.py). The word
# embedding is initialised from MODEL.CAPTION.WORD_VECTORS when that is set (the same loader as the
# region LSTM).
_C.MODEL.IMAGE_CAPTION = CfgNode()
# Give the DenseCap model (META_ARCHITECTURE "DenseCap") an image-caption head on its own backbone,
# trained jointly with the regions (losses added to the total) on the whole-image captions of
# DATASETS.IMAGE_CAPTIONS; at test time every image also gets a whole-image caption. To train the
# head alone on a trained model: MODEL.TRAIN_ONLY ("image_caption_head",) (frozen backbone), or
# ("image_caption_head", "backbone") (trainable backbone).
_C.MODEL.IMAGE_CAPTION.ENABLED = False
# registry IMAGE_CAPTION_HEAD_REGISTRY: "nic" (Show and Tell), "sat_soft", "sat_hard" (Show, Attend and Tell)
_C.MODEL.IMAGE_CAPTION.HEAD = "sat_soft"
_C.MODEL.IMAGE_CAPTION.EMBED_SIZE = 512
_C.MODEL.IMAGE_CAPTION.HIDDEN_SIZE = 512
# Hidden size of the additive attention MLP (SAT only).
_C.MODEL.IMAGE_CAPTION.ATTENTION_SIZE = 512
# Dropout on the LSTM input and output (im2txt: keep probability 0.7 -> 0.3).
_C.MODEL.IMAGE_CAPTION.DROPOUT = 0.3
# lambda of the doubly stochastic regularisation sum_i (1 - sum_t alpha_ti)^2 (SAT; 0 = off).
_C.MODEL.IMAGE_CAPTION.DOUBLY_STOCHASTIC_WEIGHT = 1.0
# Hard attention: weight of the attention entropy bonus, decay of the moving-average REINFORCE
# baseline, and the probability (per image) of using the expected context instead of a sample
# (Xu et al. sec. 4.1 use 0.5). At test time hard attention uses the expected context.
_C.MODEL.IMAGE_CAPTION.ENTROPY_WEIGHT = 0.01
_C.MODEL.IMAGE_CAPTION.BASELINE_DECAY = 0.9
_C.MODEL.IMAGE_CAPTION.HARD_EXPECTATION_PROB = 0.5
# Joint training only (SAT heads): supervise the attention with the region annotations, the
# "attention correctness" of Liu et al. (AAAI 2017): for each caption word that some (not all) of
# the image's region captions contain, add -log(attention mass on those regions' cells), times
# this weight ("loss_image_caption_attention"). 0 = Xu et al.'s unsupervised attention.
_C.MODEL.IMAGE_CAPTION.ATTENTION_SUPERVISION_WEIGHT = 0.0
# Multiplier of all image-caption losses (joint training).
_C.MODEL.IMAGE_CAPTION.LOSS_WEIGHT = 1.0
# Caption length, as MODEL.CAPTION.MAX_TOKENS: training captions are truncated to MAX_TOKENS
# words, and a generated caption has at most MAX_TOKENS words (then END, which is not counted).
_C.MODEL.IMAGE_CAPTION.MAX_TOKENS = 20
# Decoding: beam size (1 = greedy), length penalty alpha (score = logprob / len^alpha),
# BLOCK_REPEATS: no trigram twice in a caption (no repeated-word loops), captions returned per image.
_C.MODEL.IMAGE_CAPTION.BEAM_SIZE = 3
_C.MODEL.IMAGE_CAPTION.LENGTH_PENALTY = 0.0
_C.MODEL.IMAGE_CAPTION.BLOCK_REPEATS = False
_C.MODEL.IMAGE_CAPTION.NUM_CAPTIONS = 1
# Side of the feature grid the attention looks at (adaptive average pooling; 0 = the backbone's
# own grid). NIC pools the grid to one vector regardless.
_C.MODEL.IMAGE_CAPTION.FEATURE_POOL_SIZE = 0
# Standalone captioner: words seen at least this many times in the training captions form the
# vocabulary (im2txt: 4; the synthetic configs use 1).
_C.MODEL.IMAGE_CAPTION.VOCAB_MIN_COUNT = 4
# Standalone captioner training: "sample" one of an image's K captions per step, or "all" K.
_C.MODEL.IMAGE_CAPTION.TRAIN_CAPTIONS = "sample"

# Joint region-sentence embedding for region retrieval (densecap/modeling/embedding.py; Karpathy
# & Fei-Fei's alignment model): a bidirectional RNN over word embeddings for sentences, a linear
# map of region codes, both L2-normalised; trained on the positives' (region code, GT caption)
# pairs with the bidirectional max-margin ranking loss. Used by "tools/retrieve.py query --mode fast"
# (candidate stage) and by --query-image / tools/cluster.py.
_C.MODEL.EMBEDDING = CfgNode()
# Add the embedding head to the DenseCap model (model.embedding_head; loss "loss_embed").
_C.MODEL.EMBEDDING.ENABLED = False
# Size of the joint space.
_C.MODEL.EMBEDDING.DIM = 256
# Word-embedding size and hidden size (per direction) of the bidirectional sentence RNN.
_C.MODEL.EMBEDDING.WORD_SIZE = 256
_C.MODEL.EMBEDDING.HIDDEN_SIZE = 256
# Sentence RNN cell: "gru" or "lstm".
_C.MODEL.EMBEDDING.RNN = "gru"
# Ranking-loss margin on cosine scores. Karpathy & Fei-Fei use 1 on unnormalised dot products;
# with L2-normalised embeddings every score lies in [-1, 1], where a margin of 1 (half the range)
# keeps almost every negative active for ever; 0.2 is the value used for normalised joint
# embeddings since Kiros et al. / VSE++ and works on the synthetic set.
_C.MODEL.EMBEDDING.MARGIN = 0.2
# Multiplier of loss_embed (the loss is the per-pair mean of the hinge sums).
_C.MODEL.EMBEDDING.LOSS_WEIGHT = 1.0
# Train the head on detached region codes, so the ranking loss can never change the detector or
# the captioner (set False to let it shape the region codes too).
_C.MODEL.EMBEDDING.DETACH_REGION_CODES = True
# At most this many (region, caption) pairs (a random subset) enter one score matrix (0 = all).
_C.MODEL.EMBEDDING.MAX_PAIRS = 256

# Train only the parameters whose names start with one of these prefixes (e.g. ["embedding_head"]
# to train the retrieval embedding on a frozen DenseCap model loaded from MODEL.WEIGHTS); empty =
# train everything as usual. Everything else gets requires_grad False (build_optimizer).
_C.MODEL.TRAIN_ONLY = []

# --------------------------------------------------------------------------------------------
# INPUT
# --------------------------------------------------------------------------------------------
_C.INPUT = CfgNode()
# Longest image side after resizing (the original: 720).
_C.INPUT.MAX_SIZE = 720
# Random horizontal flip during training (also swaps the words "left" and "right").
_C.INPUT.RANDOM_FLIP = False

# --------------------------------------------------------------------------------------------
# DATASETS
# --------------------------------------------------------------------------------------------
_C.DATASETS = CfgNode()
# Names from the dataset catalog ("vg_train", "synthetic_val", ...), "PREPARED_DIR:SPLIT" or
# "regions:PATH.json:IMAGE_ROOT:SPLIT" (below).
_C.DATASETS.TRAIN = ("vg_train",)
_C.DATASETS.TEST = ("vg_val",)
# Root for catalog names: vg_* -> ROOT/vg/prepared, synthetic_* -> ROOT/synthetic/prepared.
_C.DATASETS.ROOT = "datasets"
# Your own region caption files (docs/DATASETS.md), named "regions:PATH.json:IMAGE_ROOT:SPLIT" in
# DATASETS.TRAIN / TEST (IMAGE_ROOT empty = the file's folder) or registered with
# densecap.data.region_captions.register_region_captions: prepared on first use into
# ROOT/cache/regions/ with Visual Genome's rules: captions longer than REGIONS_MAX_TOKENS tokens are
# dropped, train-split words seen fewer than REGIONS_MIN_TOKEN_COUNT times become <UNK>.
_C.DATASETS.REGIONS_MAX_TOKENS = 15
_C.DATASETS.REGIONS_MIN_TOKEN_COUNT = 15
# Whole-image caption datasets (ImageCaptioner) are named in DATASETS.TRAIN / TEST as
#   "captions:PATH.json:SPLIT"      Karpathy-split JSON (dataset_coco.json, Flickr8k/30k, the
#                                   synthetic captions.json); SPLIT train (also takes "restval"),
#                                   val or test
#   "coco_captions:PATH.json"       a COCO captions annotation file (captions_val2014.json)
# Image paths are relative to CAPTIONS_IMAGE_ROOT; empty = the directory holding the JSON
# (COCO annotation files: the JSON's ../<train2014|val2014> when that exists).
_C.DATASETS.CAPTIONS_IMAGE_ROOT = ""
# Whole-image captions of the dense captioning datasets (MODEL.IMAGE_CAPTION.ENABLED): a Karpathy-
# split JSON or a COCO captions annotation file (format detected), every split of it, matched to
# the prepared images by IMAGE_CAPTIONS_MATCH: "image_id" (the same ids, e.g. the synthetic
# dataset) or "coco_id" (Visual Genome's coco_id from image_data.json, kept by preparation: about
# half of VG's images are COCO images). Empty = captions.json beside the prepared directory (the
# synthetic layout: DATASETS.ROOT/synthetic/captions.json). Images without captions still train
# the regions; the caption vocabulary's new words (seen >= MODEL.IMAGE_CAPTION.VOCAB_MIN_COUNT
# times in the training images' captions) are appended to the region vocabulary.
_C.DATASETS.IMAGE_CAPTIONS = ""
_C.DATASETS.IMAGE_CAPTIONS_MATCH = "image_id"

_C.DATALOADER = CfgNode()
_C.DATALOADER.NUM_WORKERS = 2

# --------------------------------------------------------------------------------------------
# SOLVER
# --------------------------------------------------------------------------------------------
_C.SOLVER = CfgNode()
_C.SOLVER.OPTIMIZER = "ADAM"  # "ADAM", "ADAMW" or "SGD"
_C.SOLVER.BASE_LR = 1e-5
_C.SOLVER.BETAS = (0.9, 0.999)
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.WEIGHT_DECAY = 1e-6
# Learning rate multiplier for the backbone (0 freezes it beyond FREEZE_AT as well).
_C.SOLVER.BACKBONE_LR_FACTOR = 1.0
_C.SOLVER.LR_SCHEDULER_NAME = "constant"  # "constant", "step", "cosine"
_C.SOLVER.STEPS = ()
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.WARMUP_ITERS = 0
_C.SOLVER.WARMUP_FACTOR = 0.001
_C.SOLVER.MAX_ITER = 100000
# Stop after this many seconds of training (0 = no limit); the last state is checkpointed.
_C.SOLVER.MAX_TIME_SECONDS = 0
# CPU training: time steps at 1 thread and at one per core, keep the faster, check again every 300
# steps and at once when steps slow down (the machine's load changed); NUM_THREADS is the start.
# Single process only. See densecap/engine/threads.py.
_C.SOLVER.AUTO_THREADS = False
_C.SOLVER.IMS_PER_BATCH = 1
_C.SOLVER.CHECKPOINT_PERIOD = 5000
_C.SOLVER.CLIP_GRADIENTS = CfgNode()
_C.SOLVER.CLIP_GRADIENTS.ENABLED = False
_C.SOLVER.CLIP_GRADIENTS.MAX_NORM = 5.0
_C.SOLVER.LOG_PERIOD = 20
# Self-critical sequence training (Rennie et al. 2017), a second stage from a cross-entropy
# checkpoint (MODEL.WEIGHTS): the whole-image caption head learns from -(r(sample) - r(greedy)) *
# log p(sample), r = CIDEr-D against the image's references with the training references' document
# frequencies; the backbone (and a joint model's dense captioner) stays fixed. REGIONS: the region
# captioner too (CIDEr-D over each region's references). See densecap/engine/scst.py.
_C.SOLVER.SCST = CfgNode()
_C.SOLVER.SCST.ENABLED = False
# sampled captions per image (Rennie et al.: 1), each against the greedy baseline
_C.SOLVER.SCST.NUM_SAMPLES = 1
# longest sampled caption in tokens incl. END (0 = MODEL.IMAGE_CAPTION.MAX_TOKENS)
_C.SOLVER.SCST.MAX_LEN = 0
_C.SOLVER.SCST.LOSS_WEIGHT = 1.0
_C.SOLVER.SCST.REGIONS = False

# --------------------------------------------------------------------------------------------
# TEST
# --------------------------------------------------------------------------------------------
_C.TEST = CfgNode()
# Evaluate on DATASETS.TEST every N iterations (0 = only at the end).
_C.TEST.EVAL_PERIOD = 10000
# Images used for periodic evaluation (the original: 1000 val images); 0 = all.
_C.TEST.MAX_IMAGES = 1000
# Images per forward pass at test time.
_C.TEST.IMS_PER_BATCH = 4
# Keep at most this many boxes per image after the final NMS (0 = all, as the original).
_C.TEST.DETECTIONS_PER_IMAGE = 0
# Drop boxes whose score (sigmoid of objectness) is below this.
_C.TEST.SCORE_THRESH = 0.0
_C.TEST.BEAM_SIZE = 1
# Region captions: beam-search length normalisation, score = logprob / length**alpha (0 = off).
_C.TEST.LENGTH_ALPHA = 0.0
# Original's behaviour for predictions that overlap no GT box (marks the last GT as used).
_C.TEST.UNMATCHED_QUIRK = True
# Test-time speed levers (densecap/inference/speed.py), applied by the predictor:
# fold frozen batch norms into the convolutions before them (same outputs up to float rounding)
_C.TEST.FOLD_BN = True
# 3x3 stride-1 convolutions through NNPACK's Winograd kernel where it is faster (large maps, CPU,
# float32, no autograd; same outputs up to float rounding); the backbone then stays NCHW
_C.TEST.WINOGRAD = True
# run the backbone in channels_last memory format (same outputs up to float rounding)
_C.TEST.CHANNELS_LAST = True
# linear layers and the caption RNN multiply through oneDNN-packed copies of their weights (CPU,
# no autograd; same outputs up to float rounding; about 80 MB more memory for the R50-FPN model)
_C.TEST.PACKED_LINEAR = True
# "" or "int8": dynamic int8 quantization of the nn.Linear layers (opt-in; changes outputs slightly)
_C.TEST.QUANTIZE = ""
# "float32" or "bfloat16": the backbone, RPN head, recognition MLP and caption decoding under
# bfloat16 autocast, float32 everywhere else (opt-in; fast on CPUs with AVX512-BF16/AMX and on GPUs;
# changes outputs slightly; not with TEST.QUANTIZE)
_C.TEST.PRECISION = "float32"

_C.OUTPUT_DIR = "./output"
# torch intra-op threads (0 = torch's default, one per core). On a small shared CPU, 1 thread plus
# a data-loading worker avoids OpenMP oversubscription (measured: 0.45 s vs 10 s per step of the
# demo model while other jobs loaded the 2 cores).
_C.NUM_THREADS = 0
_C.SEED = 0
