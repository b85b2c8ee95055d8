"""Fine-tuning on the box (README, Fine-tuning): datasets sealed at rest, and later the
training job, its evaluation and the promotion of its adapter."""
