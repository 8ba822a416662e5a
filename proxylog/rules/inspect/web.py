# ruff: noqa: E501  (patterns are long by nature; one per line)
"""PHP (933xxx), Java and JNDI (944xxx), file inclusion and traversal (930xxx, 931xxx),
session fixation (943xxx), protocol attacks (921xxx), and generic application attacks
(934xxx: Node.js, prototype pollution, server-side template injection, SSRF, Ruby, LDAP)."""

from __future__ import annotations

from proxylog.rules.inspect.catalog import CRITICAL, WARNING, Rule, rules
from proxylog.rules.inspect.transforms import LINE

_L = rf"\x{{{ord(LINE):x}}}"  # a CR or LF inside a value

PHP: list[Rule] = rules("php", "plain", [
    (933100, 1, CRITICAL, "pacn", "PHP open tag",
     r"<\?(?:php\b|=|$| [a-z$])|\[\?php\b"),
    (933130, 1, CRITICAL, "pacn", "PHP superglobals",
     r"\$_(?:get|post|cookie|request|server|files|env|session)\b|\$globals\b|\$http_raw_post_data\b"),
    (933140, 1, CRITICAL, "pacn", "PHP I/O streams",
     r"\bphp://(?:input|filter|stdin|memory|temp|fd|output)\b"),
    (933200, 1, CRITICAL, "pacn", "PHP stream wrappers",
     r"\b(?:phar|zlib|glob|expect|zip|compress\.zlib|compress\.bzip2|ogg|rar|ssh2\.[a-z]+)://|\bdata://(?:text|application|image)/"),
    (933150, 1, CRITICAL, "pacn", "high-risk PHP functions",
     r"\b(?:shell_exec|passthru|proc_open|popen|pcntl_exec|phpinfo|base64_decode|gzinflate|gzuncompress|str_rot13|create_function|call_user_func(?:_array)?|file_get_contents|file_put_contents|move_uploaded_file|highlight_file|show_source|assert_options|preg_replace|array_map|usort|ini_set|set_time_limit|fsockopen|curl_exec|posix_[a-z]+) ?\("),
    (933160, 1, CRITICAL, "pacn", "PHP code execution",
     r"\b(?:system|exec|eval|assert|include(?:_once)?|require(?:_once)?|readfile|fopen|unserialize) ?\( ?(?:['\"$]|base64|gz|str_|chr ?\(|\$_|@)|@?\beval ?\( ?\$"),
    (933170, 1, CRITICAL, "pacn", "serialized PHP object",
     r"\b[oc]:[0-9]+:\"[a-z_\\][a-z0-9_\\]*\":[0-9]+:\{|\ba:[0-9]+:\{[is]:[0-9]+[:;]"),
    (933210, 1, CRITICAL, "a", "variable function call",
     r"\$[a-z_][a-z0-9_]* ?\( ?\$_|\( ?['\"][a-z_]+['\"] ?\. ?['\"][a-z_]+['\"] ?\) ?\("),
])

JAVA: list[Rule] = rules("java", "plain", [
    (944150, 1, CRITICAL, "pachn", "Log4Shell JNDI lookup",
     r"\$\{[^\n}]*(?:j|\$\{|::-|lower:|upper:)[^\n}]*(?:n|\$\{)[^\n]*(?:d|\$\{)[^\n]*(?:i|\$\{)[^\n]*:|\$\{ ?(?:jndi|env|sys|java|date|main|ctx|spring|k8s|docker|web|log4j|bundle|marker|base64|sd|event) ?:"),
    (944110, 1, CRITICAL, "pacn", "Java runtime and process classes",
     r"\bjava\.lang\.(?:runtime|processbuilder|process|reflect|system|class|thread|classloader)\b|\bjavax\.script\b|\bprocessbuilder\b|\bgetruntime ?\( ?\) ?\. ?exec\b|\bclass\.forname\b|\.getclass ?\( ?\) ?\.(?:forname|getclassloader|getmethod)|\bjava\.(?:io\.(?:file|objectinputstream)|net\.(?:url|socket)|beans\.|util\.scanner)\b"),
    (944100, 1, CRITICAL, "pacn", "OGNL and expression-language injection",
     r"#_memberaccess|@ognl|\bognl\b|#context ?\[|%\{ ?\(?#|\$\{ ?#|\bcom\.opensymphony\.xwork2|#request ?\[|@java\.lang|\bt ?\( ?java\.|\bnew ?java\.|\$\{[^\n}]*(?:getclass|forname|getruntime|exec ?\(|processbuilder)|#\{[^\n}]*(?:getclass|forname|getruntime|exec ?\()"),
    (944120, 1, CRITICAL, "pacn", "deserialization gadgets",
     r"\borg\.apache\.commons\.collections[0-9]?\.functors\b|\bcom\.sun\.org\.apache\.xalan\b|\bcom\.sun\.rowset\.jdbcrowsetimpl\b|\binvokertransformer\b|\bchainedtransformer\b|\btemplatesimpl\b|\bjavax\.management\.badattributevalueexpexception\b|\borg\.springframework\.(?:beans\.factory|context\.support)\b|@type ?['\"]? ?: ?['\"]? ?(?:com|org|java|javax)\."),
    (944210, 1, CRITICAL, "pacn", "serialized Java object (base64)",
     r"\bro0ab|\bh4siaaaaaaaa"),
    (944130, 1, CRITICAL, "n", "Spring class loader manipulation",
     r"\bclass\.module\.classloader\b|\bclass\.classloader\b|(?:^|\.)classloader\.(?:resources|urls|parent)\b"),
])

LFI: list[Rule] = rules("lfi", "plain", [
    (930110, 1, CRITICAL, "p", "path traversal in the path",
     r"(?:^|[/\\])\.{2,3}(?:[/\\;]|$)"),
    (930111, 1, CRITICAL, "ac", "path traversal in a value",
     r"(?:^|[/\\=:\x{e000}])\.{2,3}[/\\]{1,2}[^\n]*\.{2,3}[/\\]|(?:^|[/\\=])\.{2,3}[/\\]{1,2}(?:etc|proc|windows|winnt|boot|var|usr|home|root|tmp|bin|dev|sys|opt|inetpub|system32)\b|(?:^|/)\.{4,}[/\\]|\.\.;/|^\.{2,3}[/\\]"),
    (930120, 1, CRITICAL, "pac", "operating system file access",
     r"(?:^|[/\\ =:]|file:|\x{e000})(?:etc/(?:passwd|shadow|group|gshadow|hosts|issue|motd|crontab|sudoers|fstab|mtab|resolv\.conf|environment|profile|bashrc|master\.passwd|security/|ssh/|apache2?/|httpd/|nginx/|mysql/|php[0-9.]*/|init\.d/|rc\.d/|inetd\.conf|hostname|network/|sysconfig/|redhat-release|debian_version|lsb-release|os-release|shells|aliases|exports|httpd\.conf|my\.cnf|vsftpd\.conf|pam\.d/|x11/|cron)|proc/(?:self|[0-9]+)/(?:environ|cmdline|fd|maps|status|cwd|exe|root|mem|mounts|stat)|proc/(?:version|cpuinfo|meminfo|mounts|net/)|(?:windows|winnt)/(?:win\.ini|system\.ini|system32|repair/|php\.ini|debug/|panther/)|boot\.ini\b|win\.ini\b|\.ssh/(?:id_[a-z0-9]+|authorized_keys|known_hosts)|/\.(?:bash_history|bash_profile|mysql_history|psql_history|viminfo|zsh_history)\b|var/log/(?:[a-z0-9_-]+/)?(?:access|error|auth|syslog|messages|secure|mail|daemon)|var/(?:lib|spool|mail|run|www)/|usr/local/(?:apache|etc|lib)|web-inf/(?:web\.xml|classes|lib)|wp-config\.php|(?:^|/)(?:\.htpasswd|\.htaccess|\.env|\.git/config|\.aws/credentials|\.docker/config\.json)\b|(?:^|/)(?:config|configuration|settings|database|db|local)\.(?:php|yml|yaml|ini|inc|xml|json|cfg)(?:$|[?#~.])|c:[/\\](?:windows|winnt|boot|inetpub|program)|\\windows\\|/\.bashrc\b|(?:apache2?|httpd|nginx)/logs?/(?:access|error)|web\.config\b)"),
    (930130, 1, CRITICAL, "p", "restricted file access",
     r"/\.(?:git|svn|hg|bzr|env|aws|docker|htpasswd|htaccess|ds_store|idea|vscode|ssh|npmrc|netrc|pgpass|my\.cnf|bash_history|travis\.yml|gitlab-ci\.yml)(?:/|$|\.)|/web-inf/|/meta-inf/"),
    (930131, 2, CRITICAL, "p", "backup, dump or key file",
     r"\.(?:sql|bak|old|orig|swp|backup|sqlite|mdb|pem|key|pfx|p12|jks)$|~$"),
    (930121, 2, CRITICAL, "h", "operating system file in a header",
     r"(?:^|[/\\ =:])(?:etc/(?:passwd|shadow|hosts)|proc/self/|win\.ini|boot\.ini)\b|\.\.[/\\]\.\.[/\\]"),
])

RFI: list[Rule] = rules("rfi", "plain", [
    (931100, 1, CRITICAL, "a", "URL to an IP address",
     r"^(?:https?|ftps?|file|php|data|gopher|dict|ldap|smb|tftp|jar|netdoc)://(?:[^\n@/]+@)?(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b|^(?:https?|ftp)://(?:0x[0-9a-f]{2,8}|[0-9]{8,10})\b"),
    (931120, 1, CRITICAL, "a", "URL ending in a question mark, hash or NUL",
     r"^(?:ht|f)tps?://[^\n]+[?#]$|^(?:ht|f)tps?://[^\n]+%00"),
    (931110, 1, CRITICAL, "a", "URL of a script file",
     r"^(?:ht|f)tps?://[^\n? ]+\.(?:php[0-9]?|phtml|txt|sh|pl|py|cgi|asp|aspx|jsp|exe|inc|js)(?:\?[^\n]*)?$"),
    (931121, 1, CRITICAL, "a", "non-web URL scheme",
     r"^(?:file|gopher|dict|ldap|ldaps|smb|tftp|jar|netdoc|sftp|ssh2|expect|phar|mailto:[^\n]*%0a)(?::|://)"),
    (931130, 3, CRITICAL, "a", "absolute URL in a parameter",
     r"^(?:ht|f)tps?://[a-z0-9.-]+"),
])

SESSION: list[Rule] = rules("session-fixation", "plain", [
    (943100, 1, CRITICAL, "pacn", "setting a cookie from the request",
     r"\.cookie\b[^\n]*(?:expires|domain|path|max-age) ?=|\bhttp-equiv ?= ?['\"]? ?set-cookie\b|\bset-cookie ?:|document\.cookie ?="),
])

PROTOCOL: list[Rule] = rules("protocol", "plain", [
    (921110, 1, CRITICAL, "pacn", "request smuggling: a request line inside a value",
     _L + r" ?(?:get|post|put|delete|head|options|trace|connect|patch|propfind|proppatch|mkcol|copy|move|lock|unlock) [^\n ]+ ?http/[0-9]|(?:^|" + _L + r")(?:get|post|put|head) /[^\n ]* http/[0-9]\.[0-9]"),
    (921120, 1, CRITICAL, "pacn", "response splitting: a header line inside a value",
     _L + r" ?(?:content-(?:type|length|disposition|encoding)|set-cookie|location|refresh|transfer-encoding|x-[a-z-]+|cache-control|access-control-[a-z-]+|host) ?:"),
    (921130, 1, CRITICAL, "pacn", "response splitting: a status line or HTML after a line break",
     r"(?:^|" + _L + r")http/[0-9]\.[0-9] [0-9]{3}\b|" + _L + r" ?<(?:html|meta|body|script)\b"),
    (921150, 1, CRITICAL, "n", "line break in a parameter name",
     _L),
    (921200, 1, CRITICAL, "ac", "LDAP injection",
     r"\* ?\) ?\( ?[|&!]? ?\(? ?[a-z]+ ?=|\) ?\( ?[|&!] ?\( ?[a-z]+ ?=|^\* ?\) ?\(|\( ?[|&] ?\( ?(?:uid|cn|objectclass|password|userpassword|mail|sn) ?="),
    (921240, 1, CRITICAL, "pa", "mod_proxy unix socket",
     r"\bunix:[^\n|]*\|"),
    (921151, 3, CRITICAL, "a", "line break in a parameter value",
     _L),
])

GENERIC: list[Rule] = rules("generic", "plain", [
    (934100, 1, CRITICAL, "pacn", "Node.js code injection",
     r"_\$\$nd_func\$\$_|\b__js_function\b|\beval ?\( ?string\.fromcharcode|\brequire ?\( ?['\"\x60](?:child_process|fs|net|vm|os)['\"\x60]|\bchild_process\b|\bprocess\. ?(?:mainmodule|binding|env|kill|exit|dlopen)\b|\bglobal\.process\b|\.constructor ?\. ?constructor\b|\bconstructor ?\( ?['\"\x60]return\b|\bfunction ?\( ?\) ?\{ ?(?:return )?(?:process|require|this)\b|\bvm\.runin(?:new|this)?context\b"),
    (934130, 1, CRITICAL, "pacn", "JavaScript prototype pollution",
     r"\b__proto__\b|\bconstructor ?(?:\. ?|\[ ?['\"]? ?)prototype\b|\b__(?:definegetter|definesetter|lookupgetter|lookupsetter)__\b"),
    (934150, 1, CRITICAL, "pac", "Ruby code injection",
     r"\b(?:kernel|open3|io|process|pty)\.(?:popen[0-9a-z]*|spawn|exec|system|capture[0-9a-z]*|open|fork|syscall)\b|%x\{|\b(?:instance_eval|class_eval|module_eval|instance_variable_set|const_get|public_send)\b|\bsystem ?\( ?['\"]|\bmarshal\.load\b|\berb\.new\b|\bruby/(?:object|hash|struct):"),
    (934110, 1, CRITICAL, "pac", "server-side request forgery to a metadata or loopback address",
     r"(?:^|[=@ ])(?:https?|gopher|dict|ftp|file)://(?:[^\n@/]+@)?(?:169\.254\.169\.254|metadata\.google\.internal|metadata\.azure\.com|100\.100\.100\.200|\[?fd00:ec2::254|localhost|127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|0\.0\.0\.0|0x7f[0-9a-f]{6}|2130706433|\[::1?\]|\[::ffff:)"),
    (934180, 1, CRITICAL, "pacn", "server-side template injection",
     r"\{\{[^\n}]*(?:[0-9] ?[*+] ?['\"]?[0-9]|config|self\b|request\b|class|mro|subclasses|globals|builtins|import|popen|cycler|joiner|namespace|lipsum|\|attr|constructor|_self\.env|getfilter|registerundefinedfilter|range ?\(|\.__)|\$\{ ?[0-9]+ ?[*+] ?[0-9]+ ?\}|#\{ ?[0-9]+ ?[*+] ?[0-9]+ ?\}|<%= ?[^\n%]*%>|<#assign\b|\bfreemarker\.template\.utility\.execute\b|__\$\{|\*\{ ?t ?\(|\{php\}|\{\{=|\{% ?(?:import|include|for|set|if|debug|load|extends)\b[^\n]*%\}|\$\{\{[^\n}]*\}\}|@\( ?[0-9]+ ?[*+] ?[0-9]+ ?\)|\{\$smarty\.|\{\{ ?_self\b"),
    (934181, 2, WARNING, "a", "template delimiters",
     r"\{\{[^\n}]+\}\}|\{%[^\n%]+%\}|\$\{[^\n}]+\}"),
])
