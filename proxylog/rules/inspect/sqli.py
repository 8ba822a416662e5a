# ruff: noqa: E501  (patterns are long by nature; one per line)
"""SQL injection (CRS 942xxx) and NoSQL operator injection (942290)."""

from __future__ import annotations

from proxylog.rules.inspect.catalog import CRITICAL, WARNING, Rule, rules

# a quote, parenthesis or number that closes the application's own SQL literal
_BREAK = r"(?:['\x60\")]|\b[0-9]+)"
_BOOL = r"(?:or|and|xor|not|\|\||&&)"

SQLI: list[Rule] = rules("sqli", "sql", [
    (942190, 1, CRITICAL, "ac", "UNION SELECT",
     r"\bunion\b[ (]*(?:all|distinct)?[ (]*select\b"),
    (942130, 1, CRITICAL, "ac", "tautology after a closed literal",
     _BREAK + r" ?\)* ?" + _BOOL + r" ?\(* ?(?:['\"]?[a-z0-9_]+['\"]? ?\)* ?(?:=|<=?|>=?|<>|!=|\blike\b|\bis\b|\bin\b|\bregexp\b)|true\b|false\b|null\b|not\b|[0-9]+ ?(?:--|#|;|$|\)))"),
    (942132, 1, CRITICAL, "a", "a value that starts with a boolean test",
     r"^ ?\)* ?(?:or|and|xor|\|\||&&) ?\(* ?['\"]?[a-z0-9_]+['\"]? ?\)* ?(?:={1,2}|<>|!=|<|>|\blike\b)"),
    (942540, 1, CRITICAL, "a", "authentication bypass: quote, operator, quote",
     r"^['\"] ?[-+*/%^&|]{1,2} ?['\"]$|['\"] ?(?:or|and) ?['\"]{2} ?[-+*/%^&|=]"),
    (942131, 1, CRITICAL, "a", "boolean test with a comment or a quote",
     r"['\")] ?" + _BOOL + r" ?['\"(]?[a-z0-9_ ]*['\"]? ?(?:--|#|;)"),
    (942440, 1, CRITICAL, "ac", "closed literal followed by a comment",
     r"['\"\x60)] ?\)* ?;? ?(?:--(?:[ -]|$)|#|/\*)"),
    (942210, 1, CRITICAL, "ac", "stacked query after a closed literal",
     _BREAK + r" ?\)* ?; ?(?:select|insert|update|delete|drop|create|alter|exec(?:ute)?|declare|truncate|shutdown|waitfor)\b"),
    (942270, 1, CRITICAL, "ac", "SELECT ... FROM after a closed literal or in a subquery",
     r"(?:['\")] ?|\( ?)select\b[^\n]+\bfrom\b"),
    (942160, 1, CRITICAL, "ac", "blind SQLi: sleep or benchmark",
     r"\b(?:sleep|benchmark|pg_sleep|dbms_lock\.sleep|randomblob) ?\( ?[0-9]"),
    (942170, 1, CRITICAL, "ac", "conditional sleep",
     r"\b(?:if|case|when|select|and|or)\b ?\(*[^\n]*\b(?:sleep|benchmark|pg_sleep) ?\("),
    (942280, 1, CRITICAL, "ac", "WAITFOR DELAY / pg_sleep",
     r"\bwaitfor\b ?(?:delay|time)\b ?'|\bpg_sleep\b"),
    (942140, 1, CRITICAL, "ac", "database catalog names",
     r"\b(?:information_schema|mysql\.(?:user|db)|performance_schema|pg_(?:catalog|shadow|user|tables|namespace)|sys\.(?:objects|tables|columns|databases|sql_logins)|sysobjects|syscolumns|msysobjects|sqlite_master|all_tables|user_tables|dba_users|v\$version)\b"),
    (942150, 1, CRITICAL, "ac", "error-based and file functions",
     r"\b(?:extractvalue|updatexml|load_file|group_concat|concat_ws|make_set|exp ?\( ?~|geometrycollection|multipoint|polygon|linestring|json_keys|name_const|utl_http\.request|utl_inaddr|dbms_pipe\.receive_message|ctxsys\.drithsx|xmltype) ?\("),
    (942151, 1, CRITICAL, "ac", "server variables",
     r"@@(?:version|datadir|hostname|basedir|tmpdir|servername|language|spid)\b|\b(?:current_user|session_user|system_user|user|database|schema|version) ?\( ?\) ?(?:--|#|,|\)|$|;)"),
    (942320, 1, CRITICAL, "ac", "stored procedures and command execution",
     r"\b(?:xp_cmdshell|xp_regread|xp_dirtree|xp_fileexist|sp_executesql|sp_oacreate|sp_configure|sp_addsrvrolemember|sp_makewebtask|openrowset|opendatasource|openquery)\b|\bexec(?:ute)?\b ?(?:master\.|xp_|sp_|\()|\bdeclare\b ?@[a-z_]+ ?(?:n?varchar|int|table|cursor)"),
    (942350, 1, CRITICAL, "ac", "data definition and manipulation",
     r"; ?(?:drop|truncate|alter|create|rename)\b ?(?:table|database|schema|user|procedure|function|view|index)\b|\binto\b ?(?:out|dump)file\b|\bload\b ?data\b ?(?:local )?infile\b|\binsert\b ?into\b[^\n]+\bvalues\b ?\(|\bupdate\b[^\n]+\bset\b[^\n]+= ?['\"0-9][^\n]*\bwhere\b"),
    (942360, 1, CRITICAL, "ac", "concatenated or encoded literals",
     r"\b(?:char|chr|nchar|ascii|ord|hex|unhex|conv) ?\( ?[0-9]{1,3} ?(?:[,+|] ?(?:char|chr)? ?\(? ?[0-9]{1,3} ?\)?){2,}|['\"] ?(?:\|\||\+) ?(?:char|chr) ?\(|0x[0-9a-f]{8,} ?(?:,|\)|--|#|$|\binto\b)"),
    (942250, 1, CRITICAL, "ac", "MATCH AGAINST, MERGE, EXECUTE IMMEDIATE",
     r"\bmatch\b ?\([^\n)]+\) ?against ?\(|\bmerge\b[^\n]+\busing\b ?\(|\bexecute\b ?immediate\b"),
    (942380, 1, CRITICAL, "ac", "ORDER BY / GROUP BY / HAVING probe",
     _BREAK + r" ?\)* ?(?:order|group) ?by ?[0-9]+ ?(?:--|#|;|/\*|$|\))|\bhaving\b ?[0-9]+ ?= ?[0-9]+|['\")] ?\bhaving\b"),
    (942230, 1, CRITICAL, "ac", "conditional injection",
     r"\bcase\b ?when\b[^\n]+\bthen\b|['\")0-9] ?(?:and|or|&&|\|\|) ?\(* ?if ?\(|\biif ?\("),
    (942500, 1, CRITICAL, "ac", "MySQL inline comment",
     r"/\*![0-9]{0,6}"),
    (942300, 1, CRITICAL, "ac", "comparison of literals",
     r"['\")] ?(?:and|or|&&|\|\|) ?['\"]?[a-z0-9_]+['\"]? ?(?:=|<>|!=|<|>) ?['\"]?[a-z0-9_]+"),
    (942520, 1, CRITICAL, "a", "numeric tautology",
     r"(?:^|[ ('\"])[0-9]+ ?\)* ?(?:or|and|xor|\|\||&&) ?\(* ?([0-9]+) ?(?:=|<>|!=|<|>|like) ?\(* ?[0-9]+\b"),
    (942330, 2, CRITICAL, "ac", "a lone quote or a quote with a closing character",
     r"^(?:['\"\x60]+|['\"\x60] ?[);#]|[);]+ ?['\"\x60]|['\"] ?--|\\['\"])$"),
    (942120, 2, CRITICAL, "ac", "SQL operators",
     r"\b(?:rlike|regexp|sounds like|is not null|not between|between [0-9]+ and [0-9]+)\b|['\"] ?(?:<>|!=|<=>) ?['\"]"),
    (942200, 2, CRITICAL, "ac", "keywords joined by comments",
     r"\b(?:select|union|from|where|and|or|insert|update|delete|drop)\b ?\(? ?(?:--|#)"),
    (942370, 2, CRITICAL, "ac", "SELECT ... FROM",
     r"\bselect\b ?(?:\*|[a-z_0-9.,`@() ]+) ?\bfrom\b ?[a-z_0-9.`\[\]]+ ?(?:\bwhere\b|\blimit\b|--|#|;|$)"),
    (942450, 2, CRITICAL, "ac", "hex literal",
     r"\b0x[0-9a-f]{16,}\b"),
    (942510, 2, CRITICAL, "ac", "backtick identifiers",
     r"\x60[a-z_0-9]+\x60 ?(?:=|,|\bfrom\b|\bwhere\b)"),
    (942430, 3, WARNING, "a", "many SQL special characters",
     r"(?:[~!@#$%^&*()\-+={}\[\]|:;\"'\x60<>][^~!@#$%^&*()\-+={}\[\]|:;\"'\x60<>\n]*){12,}"),
])

NOSQL: list[Rule] = rules("nosql", "plain", [
    (942290, 1, CRITICAL, "n", "MongoDB operator in a parameter name",
     r"(?:^|[\[.])\$(?:ne|eq|gt|gte|lt|lte|in|nin|regex|where|exists|or|and|not|nor|expr|elemmatch|type|mod|all|size|function|accumulator|lookup)\b"),
    (942291, 1, CRITICAL, "ac", "MongoDB operator or JavaScript in a value",
     r"\{ ?['\"]?\$(?:ne|eq|gt|gte|lt|lte|in|nin|regex|where|exists|or|and|not|nor|expr)['\"]? ?:|\$where\b|\bdb\.[a-z_]+\.(?:find|insert|update|remove|drop)\b|\bthis\.[a-z_]+ ?(?:==|!=|\.match ?\()|['\"] ?(?:\|\||&&) ?['\"]?[a-z0-9]{0,10}['\"]? ?(?:==|!=)|\bsleep ?\( ?[0-9]+ ?\) ?\|\||\btrue ?, ?\$where|\$(?:or|and|nor|ne|gt|lt|regex|where|in|nin) ?: ?[\[{'\"0-9]|(?:\|\||&&) ?[0-9a-z'\"]{1,10} ?==|\bfunction ?\( ?\) ?\{[^\n]*\breturn\b"),
])
