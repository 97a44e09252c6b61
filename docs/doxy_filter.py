#!/usr/bin/env python3
# Doxygen input filter for Pith's public headers. They keep plain C comments (STYLE.md); Doxygen
# takes a comment before a declaration as its documentation only when it opens with /**, and a
# comment after a member as that member's only when it opens with /**<. The headers are not
# changed: Doxygen reads them through this.
import os
import re
import sys

out = []
first = True
with open(sys.argv[1], encoding="utf-8") as f:
    for line in f.read().split("\n"):
        s = line.lstrip()
        if s.startswith("/*") and not s.startswith("/**"):
            # The opening comment describes the file: Doxygen lists (and checks) a file's
            # functions only when the file itself is documented.
            tag = "/** @file " + os.path.basename(sys.argv[1]) + "\n *" if first else "/**"
            line = line.replace("/*", tag, 1)
            first = False
        else:
            m = re.match(r"^(.*\S)\s*/\*(?!\*)(.*)$", line)
            if m and not m.group(1).lstrip().startswith("*"):
                line = m.group(1) + " /**<" + m.group(2)
        out.append(line)
sys.stdout.write("\n".join(out))
