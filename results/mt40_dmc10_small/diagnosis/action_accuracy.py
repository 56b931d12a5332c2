"""Teacher-forced action-token loss and accuracy of a checkpoint on each task's own data
(4 batches of 256 windows, seed 0). Usage: python action_accuracy.py RUN_DIR task1,task2,...
Reads the data root /work/data/datasets (edit DATA for yours)."""
import sys, torch, numpy as np
from dtune.models.io import load_model, run_layout
from dtune.data.dataset import TrajectoryData, WindowSampler
torch.set_num_threads(1)
DATA = "/work/data/datasets"
model, cfg = load_model(sys.argv[1]); layout = run_layout(cfg)
stats = (model.state_mean.numpy(), model.state_std.numpy())
for task in sys.argv[2].split(","):
    d = TrajectoryData(DATA, [task], layout=layout, state_stats=stats)
    s = WindowSampler(d, model.cfg.context_len, 256, seed=0)
    accs, losses = [], []
    with torch.no_grad():
        for _ in range(4):
            b = {k: torch.from_numpy(v) for k, v in s.sample().items()}
            loss, m = model.loss(b)
            accs.append(float(m["action_acc"])); losses.append(float(m["loss"]))
    print(f"{task:28s} loss {np.mean(losses):.3f} acc {np.mean(accs):.3f}")
