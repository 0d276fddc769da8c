"""Preference alignment: the DPO family, reward models, and the align stage on the one Trainer.

losses.py    DPO, conservative DPO, IPO, SimPO, ORPO, KTO and Bradley-Terry as pure functions of
             summed log-probs (and lengths), with TRL's reported rewards, margins and accuracy
"""
