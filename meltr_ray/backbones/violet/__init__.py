"""Violet (Fu et al. 2021): Video Swin + BERT cross encoder, the headline backbone of the MELTR paper."""
