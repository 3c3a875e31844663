"""The Stripe event inbox: store each delivery once, process each event exactly once.

``inbox`` is the webhook's side (verify, insert-or-ignore, enqueue after commit);
``process`` is the worker's (lock, dispatch to ``handlers``, mark in the same
transaction as the money it moves; failures counted and parked for operators).
"""
