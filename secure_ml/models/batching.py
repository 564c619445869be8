"""How many images one gradient-free evaluation forward takes (membership scores, activation statistics, RMIA, audits).

On the CPU, a batch whose activations pass glibc's mmap threshold (at most 32 MB; one SmallCNN feature map of
800 digits is 40 MB) gets fresh pages from the kernel on every forward and page-faults through them: 400
digits' membership scores took 60 ms in one batch of 512 against 35 ms in batches of 128, and 800 digits'
activation statistics 150 ms in one pass against 55-90 ms in chunks (two threads, side by side). Per-image
results do not depend on the batching (eval mode).
"""

EVAL_BATCH = 128
