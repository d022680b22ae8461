"""mmseg 0.30 plugin for SegMAN: registers the backbones ``SegMANEncoder_{t,s,b,l,l2}``, the head
``SegMANDecoder`` (alias ``MMSCDecoder``), the ``AlignedResize`` transform and loaders that name bad
files (:mod:`segman_mmseg.loading`), and applies the
mmcv-full 1.7.2 compatibility fixes for current torch (:mod:`segman_mmseg.compat`), crash-safe
checkpoints and a validating ``--auto-resume`` (:mod:`segman_mmseg.safe_training`), and a training
data order and random numbers that resuming continues exactly (:mod:`segman_mmseg.exact_resume`).

Configs load it with ``custom_imports = dict(imports=['segman_mmseg'])``.
"""
from . import compat, exact_resume, safe_training

compat.apply()
safe_training.install()
exact_resume.install()

from . import backbone, decode_head, loading, transforms  # noqa: E402,F401  (registration side effects)
