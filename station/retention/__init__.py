"""Retention: the protection rule and levels (pure), annotations, the sweeper and its
schedule.
"""
