"""SelM's modules. Importing this package registers the staged visual backbones."""
from .audio import VGGish, load_vggish_weights
from .backbone import StagedPVTv2, StagedResNet, load_visual_weights
from .bcsm import BCSM, BCSM_MODES
from .clever import CLEVERDecoder
from .criterion import SelMCriterion
from .dam import DAM_MODES, A2VBlock, DualAlignmentModule, V2ABlock, build_dam
from .mamba import Mamba, MambaBlock
