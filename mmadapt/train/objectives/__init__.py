"""Training objectives (SFT, DPO family, KTO): small registered classes over pure tensor functions."""
