"""Training objectives: wav2vec 2.0 span masking and the contrastive loss (pre-training)."""
