"""The maths of the two causal-intervention methods (C2AM: front-door, CONTA: backdoor adjustment).

The stages that run them live in `fastwsss.stages` (global_cam, c2am, confounder); which stages a method
runs, and in which round, is `fastwsss.stages.plan`. The baseline method `cam` is IRNet unchanged and
needs nothing here.
"""
