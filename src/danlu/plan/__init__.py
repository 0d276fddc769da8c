"""Planning before training: FLOPs, scaling laws (published and fitted to your runs), memory per
device, time and cost on a hardware table, and a parallel-layout planner (`danlu plan`)."""
