"""SuperRL-Megatron: hybrid RL + supervised post-training on megatron-core."""
