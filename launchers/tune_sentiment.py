#!/usr/bin/env python
"""Tune MELTR for multimodal sentiment analysis on Ray (UniVL on CMU-MOSI feature shards), ranked by binary
accuracy.

    ray submit --tmux cluster.yaml launchers/tune_sentiment.py -- \\
        --data s3://BUCKET/cmu_mosi_shards --pretrained /home/ubuntu/univl.pretrained.bin \\
        --storage s3://BUCKET/meltr_results
"""
import sys

from meltr_ray.launch import tune_main

if __name__ == "__main__":
    if "--data" not in sys.argv and "--restore" not in sys.argv:
        sys.exit("tune_sentiment.py needs --data (shards from `meltr-ray ingest --format cmu-mosi ...`); "
                 "the embedded demo is launchers/tune_retrieval.py")
    sys.exit(tune_main("sentiment", description=__doc__.split("\n\n")[0]))
