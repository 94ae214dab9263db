"""Experiments that run as product commands (``meltr-ray experiment NAME``): measured evidence, not demos.

``digits`` (:mod:`.digits`, :mod:`.report`): MELTR against primary-only, MTL, fixed and learned linear
combinations on scikit-learn's bundled digits with the image-only losses of supplementary §H (issue 9).
"""
