"""Which parameters a backward pass reached (a module name no other test folder uses): shared by
the HYDRA-TOK and HYDRA-X tokenizer tests."""


def take_grads(model):
    """Every parameter's gradient by name (None where none flowed); the model's are cleared."""
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def reaches(grads, prefix):
    """Some parameter under ``prefix`` got a non-zero gradient."""
    hits = [g for n, g in grads.items() if n.startswith(prefix) and g is not None]
    return bool(hits) and any(g.abs().sum() > 0 for g in hits)


def untouched(grads, prefix, zero_ok=False):
    """No gradient flowed into ``prefix`` (``zero_ok``: or only zeros, as from a term weighted 0)."""
    return all(g is None or (zero_ok and not g.abs().sum()) for n, g in grads.items() if n.startswith(prefix))
