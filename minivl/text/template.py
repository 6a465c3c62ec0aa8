"""Conversation templates: how a dialogue becomes one string (official ``internvl/conversation.py``).

All templates InternVL 2.5 and its predecessors use share one layout (the official
``SeparatorStyle.MPT``)::

    system_template.format(system_message) + sep
    + role_user + question + sep + role_assistant + answer + sep + ...
    + role_assistant                      # generation prompt: a role with no message

InternVL 2.5 uses ``internvl2_5``, whose ``sep`` is ``"<|im_end|>\\n"``; the 2.0-era
``internlm2-chat`` and ``Hermes-2`` use ``"<|im_end|>"`` with no newline. The default system
messages are the official ones, verbatim (Chinese); a record's own system turn replaces them.

Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from minivl.text.tokenizer import IM_END_TOKEN, IM_START_TOKEN, PAD_TOKEN

# "You are InternVL (Shusheng Wanxiang), a multimodal large language model developed by
# Shanghai AI Laboratory, Tsinghua University and several partner institutions."
INTERNVL2_5_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
# The 2.0-era default ("... developed by Shanghai AI Laboratory and SenseTime ...").
INTERNLM2_SYSTEM_MESSAGE = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)


@dataclass(frozen=True)
class Template:
    """A conversation template in the official MPT separator style.

    ``roles`` are the (user, assistant) prefixes; ``sep`` closes the system prompt and every
    message; ``stop_str`` is an extra stop string some templates declare.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """

    name: str
    system_template: str
    system_message: str
    roles: tuple[str, str]
    sep: str
    stop_str: str | None = None

    @property
    def stop_token(self) -> str:
        """The token generation stops at: ``sep`` stripped (``<|im_end|>``), as in ``chat()``."""
        return self.sep.strip()

    def system_prompt(self, system_message: str | None = None) -> str:
        """The system block including ``sep``; ``system_message`` replaces the default."""
        message = self.system_message if system_message is None else system_message
        return self.system_template.format(system_message=message) + self.sep

    def render(
        self,
        messages: Sequence[tuple[str, str | None]],
        system_message: str | None = None,
    ) -> str:
        """Render ``(role, message)`` pairs, roles ``"user"``/``"assistant"`` (or the official
        ``"human"``/``"gpt"``). A message of ``None`` (or ``""``, as in the official
        ``get_prompt``) writes only the role prefix: put ``("assistant", None)`` last for the
        generation prompt.

        Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
        """
        out = self.system_prompt(system_message)
        for role, message in messages:
            prefix = self.role_prefix(role)
            out += prefix + message + self.sep if message else prefix
        return out

    def role_prefix(self, role: str) -> str:
        """The prefix of ``role`` (``user``/``human`` or ``assistant``/``gpt``)."""
        if role in ("user", "human"):
            return self.roles[0]
        if role in ("assistant", "gpt"):
            return self.roles[1]
        raise ValueError(f"template {self.name!r}: unknown role {role!r}; expected user/human or assistant/gpt")


_SYSTEM_TEMPLATE = IM_START_TOKEN + "system\n{system_message}"
_ROLES = (IM_START_TOKEN + "user\n", IM_START_TOKEN + "assistant\n")

TEMPLATES: dict[str, Template] = {
    "internvl2_5": Template(
        name="internvl2_5",
        system_template=_SYSTEM_TEMPLATE,
        system_message=INTERNVL2_5_SYSTEM_MESSAGE,
        roles=_ROLES,
        sep=IM_END_TOKEN + "\n",
    ),
    "internlm2-chat": Template(
        name="internlm2-chat",
        system_template=_SYSTEM_TEMPLATE,
        system_message=INTERNLM2_SYSTEM_MESSAGE,
        roles=_ROLES,
        sep=IM_END_TOKEN,
    ),
    "Hermes-2": Template(
        name="Hermes-2",
        system_template=_SYSTEM_TEMPLATE,
        system_message=INTERNLM2_SYSTEM_MESSAGE,
        roles=_ROLES,
        sep=IM_END_TOKEN,
        stop_str=PAD_TOKEN,
    ),
}


def get_template(name: str | Template) -> Template:
    """The template called ``name`` (``internvl2_5``, ``internlm2-chat`` or ``Hermes-2``).

    A :class:`Template` is returned unchanged, so functions can take either.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    if isinstance(name, Template):
        return name
    if name not in TEMPLATES:
        raise KeyError(f"unknown conversation template {name!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def _jinja_str(text: str) -> str:
    """``text`` as a single-quoted Jinja string literal."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return "'" + escaped + "'"


def chat_template_jinja(template: str | Template = "internvl2_5") -> str:
    """A Jinja chat template (for ``tokenizer.chat_template``) that renders the same string as
    :meth:`Template.render`: the default system message unless the first message has role
    ``system``, then ``user``/``assistant`` messages, and the assistant prefix when
    ``add_generation_prompt=True``. Other roles raise an error at render time.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    t = get_template(template)
    head, tail = t.system_template.split("{system_message}")
    sep, user, assistant = _jinja_str(t.sep), _jinja_str(t.roles[0]), _jinja_str(t.roles[1])
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system_message = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}"
        "{%- else -%}"
        "{%- set system_message = " + _jinja_str(t.system_message) + " -%}{%- set loop_messages = messages -%}"
        "{%- endif -%}"
        "{{- " + _jinja_str(head) + " + system_message + " + _jinja_str(tail) + " + " + sep + " -}}"
        "{%- for message in loop_messages -%}"
        "{%- if message['role'] == 'user' -%}{{- " + user + " + message['content'] + " + sep + " -}}"
        "{%- elif message['role'] == 'assistant' -%}{{- " + assistant + " + message['content'] + " + sep + " -}}"
        "{%- else -%}{{- raise_exception('chat template " + t.name + ": role ' + message['role'] + "
        "' is not system (first), user or assistant') -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- " + assistant + " -}}{%- endif -%}"
    )
