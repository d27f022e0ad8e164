"""Base layer: the model zoo. Every member trains on the shared folds and writes the same OOF contract."""

from fb3stack.base.member import FoldResult, Member, MemberConfig
from fb3stack.base.registry import load_member_config, member_class, register_member

__all__ = ["FoldResult", "Member", "MemberConfig", "load_member_config", "member_class", "register_member"]
