"""The Ray a job runs on.

connect.py      reaching it (address, token) or starting an embedded one
runtime_env.py  the code that travels with a job to a cluster
storage.py      whether every node reaches the job's storage path
autoscaler.py   what an autoscaler can launch, read from Ray's internals
capacity.py     what trials can use, and their resources checked against it
waiting.py      saying so while trials wait for nodes an autoscaler launches
"""
