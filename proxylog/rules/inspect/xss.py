# ruff: noqa: E501  (patterns are long by nature; one per line)
"""Cross-site scripting (CRS 941xxx)."""

from __future__ import annotations

from proxylog.rules.inspect.catalog import CRITICAL, Rule, rules

_EVENTS = (
    r"on(?:error|load|unload|click|dblclick|auxclick|contextmenu|mouse[a-z]{2,5}|pointer[a-z]{2,6}"
    r"|focus(?:in|out)?|blur|change|submit|reset|key(?:up|down|press)|abort|begin|end|toggle"
    r"|animation[a-z]{3,9}|transition[a-z]{3,6}|wheel|scroll|resize|input|invalid|select|search"
    r"|drag[a-z]{0,5}|drop|copy|cut|paste|hashchange|message|pageshow|pagehide|popstate|show"
    r"|beforeunload|beforeprint|afterprint|start|finish|play|playing|pause|ended|seeked|seeking"
    r"|loadstart|loadeddata|canplay|readystatechange|timeupdate|volumechange|bounce|activate"
    r"|formdata|securitypolicyviolation|touch[a-z]{3,6}|storage|online|offline)"
)
_TAGS = (
    r"script|iframe|frame|frameset|object|embed|applet|meta|base|svg|math|form|isindex|marquee"
    r"|style|link|img|image|video|audio|body|html|input|button|details|template|textarea|keygen"
    r"|xss|bgsound|layer|ilayer|xml|import|animate|set|handler|listener|portal|noscript"
)

XSS: list[Rule] = rules("xss", "plain", [
    (941110, 1, CRITICAL, "pachn", "script tag",
     r"<(?:/ ?)?script\b|<script[ />]"),
    (941120, 1, CRITICAL, "pacn", "event handler attribute",
     r"(?:^|[ \"'\x60;/(=,])" + _EVENTS + r" ?="),
    (941121, 1, CRITICAL, "pachn", "event handler inside a tag",
     r"<[a-z][^\n>]*[ /\"'\x60]on[a-z]{3,30} ?="),
    (941130, 1, CRITICAL, "pacn", "attribute vectors",
     r"<\?(?:import|xml:namespace)\b|\b(?:datasrc|datafld|dataformatas) ?=|\bstyle ?= ?[^\n]*\\0{0,4}[0-9a-f]{2}|\b(?:xlink:href|formaction|srcdoc|fscommand|seeksegmenttime|background ?= ?['\"]? ?javascript)\b|\bdata ?: ?(?:text/html|application/(?:x-)?javascript|text/javascript|image/svg\+xml)\b|\bstyle ?= ?[^\n]*(?:expression ?\(|javascript ?:|behavior ?:|-moz-binding)"),
    (941140, 1, CRITICAL, "pachn", "javascript: or vbscript: URI",
     r"(?:java|vb|live|j ava|ja vascript)script ?: ?[^\n ]*[(\[.=\x60'\"]|(?:^|[ =\"'(])(?:java|vb)script ?: ?(?:alert|prompt|confirm|eval|void|top|this|self|window|document|location|fetch|open)\b"),
    (941160, 1, CRITICAL, "pacn", "HTML injection: active tags",
     r"<(?:" + _TAGS + r")\b[^\n>]*(?:>|=|/|$)|<(?:" + _TAGS + r")$"),
    (941170, 1, CRITICAL, "pacn", "breaking out of an attribute",
     r"['\"\x60] ?/?> ?<[a-z!/?]|['\"\x60] ?(?:autofocus|onfocus|onerror|onload|onmouseover|style|src) ?="),
    (941180, 1, CRITICAL, "pachn", "DOM keywords",
     r"document ?\. ?(?:cookie|write(?:ln)?|domain|location|body\.innerhtml)\b|window ?\. ?(?:location|open|name)\b|\.(?:innerhtml|outerhtml|parentnode|insertadjacenthtml)\b|-moz-binding|\bfromcharcode\b|<!\[cdata\[|\bcreateelement ?\( ?['\"]script"),
    (941390, 1, CRITICAL, "pacn", "JavaScript call",
     r"\b(?:alert|prompt|confirm|eval|settimeout|setinterval|execscript|atob|import)(?:\(|\x60)|\b(?:top|self|window|parent|this|globalthis|frames) ?\[ ?['\"\x60][a-z]+|\bnew ?function ?\(|\.(?:call|apply|bind) ?\( ?(?:null|this|window|top|self)\b"),
    (941350, 1, CRITICAL, "pacn", "UTF-7 encoded tag",
     r"\+adw-|\+ad4-"),
    (941360, 1, CRITICAL, "pac", "JSFuck",
     r"(?:[!+]\[\]|\[\]\[|\(\[\]\)|!!\[\]){3,}"),
    (941370, 1, CRITICAL, "pac", "global objects reached by index",
     r"\b(?:self|document|this|top|window|globalthis)\b ?\[ ?['\"\x60][^\n]+\] ?\[|\b(?:self|window|top)\b ?\. ?(?:constructor|__proto__)\b"),
    (941310, 1, CRITICAL, "pac", "malformed tag in a US-ASCII or width trick",
     r"\xbc[^\n\xbe]+\xbe|\x{ff1c}[a-z/!]"),
    (941320, 2, CRITICAL, "pac", "any HTML tag with an attribute",
     r"<[a-z][a-z0-9-]* [^\n>]*\b(?:href|src|action|data|style|background|dynsrc|lowsrc|poster|code|codebase|classid) ?="),
    (941330, 2, CRITICAL, "pac", "HTML comment or CDATA",
     r"<!--|-->|<!\[cdata"),
])
