"""Bringing an index up to date with a folder: the job itself (job.py: plan, embed, commit), the plan of
where each file's vector comes from (plan.py), the model, loaded only when something needs embedding
(model.py), the executors that decode and embed (executors.py on this machine, ray_executor.py on a Ray
cluster) and the checkpoints that let a killed run resume (checkpoints.py).

It sits above `index` and `embedding`, which it joins, and below the commands.
"""
