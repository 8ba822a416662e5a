# ruff: noqa: E501  (patterns are long by nature; one per line)
"""Remote command execution (CRS 932xxx): Unix and Windows shells, shell evasions, Shellshock."""

from __future__ import annotations

from proxylog.rules.inspect.catalog import CRITICAL, Rule, rules

# commands that are rarely English words, and those that are (they need a shell-looking tail)
_RARE = (
    r"whoami|uname|ifconfig|ipconfig|nslookup|netstat|wget|curl|ncat|netcat|nc|bash|zsh|ksh|csh|dash"
    r"|sh|python[23]?|perl|php|ruby|lua|node|lastlog|useradd|usermod|crontab|nohup|telnet|socat|openssl"
    r"|xterm|powershell|pwsh|cmd|certutil|bitsadmin|mshta|rundll32|regsvr32|wmic|vssadmin|cscript"
    r"|wscript|systeminfo|tasklist|taskkill|chmod|chown|chattr|base64|busybox|ping|sleep|id|ls|cat"
    r"|echo|env|ps|rm|tftp|ftp|ssh|scp|gcc|awk|gawk|sed|xxd|grep|egrep|sudo|su|dig|pwd|hostname|mkfifo"
    r"|nmap|xargs|printenv|getent|iptables|passwd|uptime|tac|nl|od|strings|readlink|timeout|whereis|which"
)
_COMMON = r"type|dir|ver|net|reg|sc|set|del|copy|start|more|less|head|tail|find|last|who|w|kill|touch|tar|date|time|sort|uniq|wc|file|host"
_SEP = r"(?:[;|&\x{e000}]|\$\(|(?:^|[;|&=(>a-z0-9])\x60)"
_TAIL = r"(?:$|[;|&\x60)<>#\x{e000}]| ?-[a-z]| ?/| [0-9]+(?:$|[;|&])| [a-z0-9._~:@=-]+[/.=$;|&\x60)<>])"

RCE: list[Rule] = rules("rce", "cmd", [
    (932230, 1, CRITICAL, "a", "Unix command after a shell separator",
     _SEP + r" ?(?:sudo |nohup |exec |env |command |eval )?(?:/usr(?:/local)?)?(?:/s?bin/)?(?:" + _RARE + r")\b" + _TAIL),
    (932235, 1, CRITICAL, "a", "common-word command after a shell separator, with arguments",
     _SEP + r" ?(?:" + _COMMON + r")\b ?(?:-[a-z]{1,3}\b|/[a-z]|[a-z0-9._~-]*/)"),
    (932236, 1, CRITICAL, "a", "command at the start of a value, with a path or option",
     r"^(?:" + _RARE + r")\b ?(?:-[a-z]{1,3} |/(?:etc|bin|tmp|dev|proc|var|usr|home|root)\b|[a-z0-9._~:-]+[;|\x60]| ?(?:https?|ftp)://| [0-9]{1,3}\.[0-9]{1,3}\.)"),
    (932130, 1, CRITICAL, "a", "shell command substitution",
     r"\$\( ?(?:" + _RARE + r"|" + _COMMON + r")\b|(?:^|[;|&=(>\x{e000}a-z0-9])\x60 ?(?:" + _RARE + r")\b[^\n\x60]*\x60|\$\{(?:ifs|path|home|shell|user|pwd)\b"),
    (932160, 1, CRITICAL, "a", "Unix shell path",
     r"(?:^|[ ;|&\x60(=<>])(?:/usr(?:/local)?)?/s?bin/(?:" + _RARE + r"|" + _COMMON + r")\b|/dev/(?:tcp|udp)/|\bmkfifo\b|/bin/(?:ba|z|k|da)?sh\b"),
    (932200, 1, CRITICAL, "a", "shell globbing or quoting evasion",
     r"/[a-z?*]{0,6}[?*][a-z?*]{0,6}/[a-z?*]{0,8}[?*]|(?:^|[;|&\x60 ])[a-z?*]{0,3}[?*][a-z?*]{0,3}[?*]? /(?:[a-z?*]+/)*[a-z?*]*[?*]"),
    (932120, 1, CRITICAL, "a", "PowerShell",
     r"\b(?:invoke-(?:webrequest|expression|restmethod|command|item|mimikatz|shellcode|wmimethod)|iex ?\(|new-object (?:system\.)?net\.webclient|downloadstring|downloadfile|start-process|set-executionpolicy|get-wmiobject|frombase64string|\[system\.convert\])\b|\b(?:powershell|pwsh)(?:\.exe)? ?-(?:e|ec|enc|encodedcommand|nop|noni|noprofile|w|windowstyle|c|command|executionpolicy|ep)\b"),
    (932140, 1, CRITICAL, "a", "Windows cmd.exe",
     r"\bcmd(?:\.exe)? ?/[ckr]\b|\bfor ?/[fdlr]\b|\bcertutil(?:\.exe)? ?-(?:urlcache|decode|encode)\b|\b(?:rundll32|regsvr32|mshta)(?:\.exe)? [^\n]*(?:http|javascript|\.dll|\.sct|scrobj)|%(?:comspec|systemroot|windir|temp|appdata|userprofile)%|\bc:/windows/system32/|\bnet (?:user|localgroup|share)\b"),
    (932250, 1, CRITICAL, "a", "reverse shell",
     r"\b(?:bash|sh) -i\b|\bnc(?:at)? (?:-[a-z]+ )*-e\b|\b[0-9]<&[0-9]{1,4}\b|\bexec [0-9]{1,3}<>/dev/|\bsocket\.socket\b|\bpty\.spawn\b|\bfsockopen ?\("),
])

SHELLSHOCK: list[Rule] = rules("rce", "plain", [
    (932170, 1, CRITICAL, "pahcn", "Shellshock function definition",
     r"^\(\) ?\{|\(\) ?\{ ?:; ?\}"),
    (932180, 1, CRITICAL, "a", "$IFS or $@ word splitting",
     r"\$\{?ifs\b|[a-z]\$@[a-z]|[a-z]\$\{[a-z0-9_]{0,10}:?-?\}[a-z]"),
    (932240, 2, CRITICAL, "a", "backslash or quote inside a word",
     r"[a-z]\\[a-z][^\n ]*/|[a-z]''[a-z]|[a-z]\"\"[a-z]"),
])
