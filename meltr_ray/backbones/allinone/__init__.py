"""All-in-one (Wang et al. 2022): one shared ViT for video and text with the temporal token roll.

``model.py`` the network, ``vit.py`` its timm-named ViT blocks and the roll, ``tasks.py`` the retrieval losses
(VTM primary, MLM) and evaluation, ``masking.py`` 80/10/10 MLM masking, ``checkpoint.py`` the official Lightning
checkpoint filter, ``spec.py`` the specs and the registered variants (``allinone_base``, ``allinone_tiny``).
"""
from . import spec  # noqa: F401  (registers the variants)
