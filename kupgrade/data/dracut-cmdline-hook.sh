#!/bin/sh
# kupgrade's dracut cmdline hook (module 90kupgrade): kupgrade's init-top script, as a program of
# its own (dracut sources its hooks; the script exits). Contract @CONTRACT@.
/usr/lib/kupgrade/init-top
