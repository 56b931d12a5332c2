"""Teacher-forced check of a DT on one episode of a DMC task's SAC data: the model acts on the data's
states while the data's own actions and rewards fill its context; prints the MSE and correlation of
its actions with the data's. Usage (repository root):
    python results/mt40_dmc10_dt_small/probe/teacher_forced.py RUN TASK EPISODE
"""
import json
import os
import sys

import h5py
import numpy as np
import torch

from dtune.eval.agents import DTAgent
from dtune.models.io import load_model
from dtune.tasks import get_task
from dtune.tasks.layout import InputLayout

run, t, ep = sys.argv[1], sys.argv[2], int(sys.argv[3])
model, _ = load_model(run)
model.eval()
run_config = json.load(open(f"{run}/config.json"))
layout = InputLayout.from_dict(run_config["layout"])
spec = get_task(t)
p=f'{os.environ.get("DATA", "/work/data/datasets")}/dtune/dmc/{t}/sac-replay-v0/data/main_data.hdf5'
with h5py.File(p) as f:
    g=f[f'episode_{ep}']; obs=g['observations'][()]; acts=g['actions'][()]; rews=g['rewards'][()]
target = float(run_config["task_info"][t]["return_max"])
agent = DTAgent(model, layout)
agent.start([spec], [target])
pred=[]
for i in range(len(acts)):
    a = agent.act([obs[i]], i)[0][:spec.act_dim]
    pred.append(a)
    full = torch.zeros(1, model.cfg.act_dim); full[0, :spec.act_dim] = torch.as_tensor(acts[i])
    agent.policy._put(2, full, model.embed_action)  # teacher forcing: the data's action in the context
    agent.observe(np.array([rews[i]], np.float32))
pred=np.array(pred)
print(t, 'ep', ep, 'return', rews.sum().round(1), 'target', round(target,1))
print('  teacher-forced MSE', ((pred-acts)**2).mean().round(4), 'data action var', acts.var().round(4),
      'corr', [np.corrcoef(pred[:,j], acts[:,j])[0,1].round(3) for j in range(spec.act_dim)])
print('  pred mean abs', np.abs(pred).mean().round(3), 'data mean abs', np.abs(acts).mean().round(3))
