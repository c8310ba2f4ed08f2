#!/bin/sh
# kupgrade's dracut pre-pivot hook (module 90kupgrade): kupgrade's init-bottom script, as a program
# of its own (dracut sources its hooks; the script exits). Contract @CONTRACT@.
/usr/lib/kupgrade/init-bottom
