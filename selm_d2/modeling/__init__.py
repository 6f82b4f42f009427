"""SelM's modules. Importing this package registers the staged visual backbones, the SelM head
(``SEM_SEG_HEADS_REGISTRY``) and the CLEVER decoder (``SELM_DECODER_REGISTRY``)."""
from .audio import VGGish, load_vggish_weights
from .backbone import StagedPVTv2, StagedResNet, load_visual_weights
from .bcsm import BCSM
from .clever import CLEVER, SELM_DECODER_REGISTRY, build_selm_decoder
from .criterion import SelMCriterion
from .dam import DAM
from .head import SelMHead
from .mamba import Mamba, MambaBlock
