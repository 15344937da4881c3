"""Stubs of the compiled module llamadiff.policy (scripts/make_stubs.py)."""

ALGORITHMS: tuple
ALGORITHM_POLICIES: dict

class Confidence(Ranked):
    def __init__(self, alg_temp: float = ...) -> None: ...


class EntropyBounded(RemaskPolicy):
    def __init__(self, gamma: float = ...) -> None: ...
    @property
    def gamma(self): ...


class LowConfidenceDynamic(RemaskPolicy):
    def __init__(self, threshold: float = ...) -> None: ...
    @property
    def threshold(self): ...


class LowConfidenceStatic(RemaskPolicy):
    def __init__(self) -> None: ...


class LowEntropy(Ranked):
    def __init__(self, alg_temp: float = ...) -> None: ...


class Margin(Ranked):
    def __init__(self, alg_temp: float = ...) -> None: ...


class Origin(RemaskPolicy):
    def __init__(self) -> None: ...

PARALLEL_MODES: tuple
PARALLEL_POLICIES: dict

class ParallelFactor(ParallelPolicy):
    def __init__(self, factor: float = ...) -> None: ...
    @property
    def factor(self): ...


class ParallelPolicy(RemaskPolicy):
    def __init__(self) -> None: ...


class ParallelThreshold(ParallelPolicy):
    def __init__(self, threshold: float = ...) -> None: ...
    @property
    def threshold(self): ...


class RandomOrder(Ranked):
    def __init__(self, alg_temp: float = ...) -> None: ...


class Ranked(RemaskPolicy):
    def __init__(self, alg_temp: float = ...) -> None: ...
    @property
    def alg_temp(self): ...


class RemaskPolicy:
    def __init__(self) -> None: ...
    @property
    def adaptive(self): ...
    @property
    def edits(self): ...
    @property
    def name(self): ...
    @property
    def post_steps(self): ...

STRATEGIES: tuple
STRATEGY_POLICIES: dict

class Sequential(RemaskPolicy):
    ...


class TokenEditing(ParallelThreshold):
    def __init__(self, threshold: float = ..., editing_threshold: float = ..., max_post_steps: int = ...) -> None: ...
    @property
    def editing_threshold(self): ...

def make_full_policy(algorithm=..., *, parallel=..., alg_temp=..., threshold=..., factor=...): ...

def make_policy(strategy, *, threshold=..., eb_gamma=..., editing_threshold=..., max_post_steps=...): ...
