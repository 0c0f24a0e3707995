"""Local real-services stack, the demo and the ``simulate`` command.

Dev tools: the workers (``llmpulse.processors``) never import them.
"""
