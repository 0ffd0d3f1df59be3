"""``train-gen --online``: on-policy groups (``groups.py``), the reward-hacking guard (``hacking_guard.py``) and
what they change in a generator's training task (``task.py``). Above the pipeline and the evaluation layers,
which drawing and judging need; the training loop sees only the loss, the guard and the extra state."""
