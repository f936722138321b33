#!/bin/sh
# Runs inside a husk guest with the share at /mnt (read-write) and /ro (read-only); prints
# "ok NAME" or "FAIL NAME: why" per check. The host side (fs-scenario.sh) checks the rest.
m=/mnt
check() { name=$1; shift; if "$@" >/tmp/out 2>&1; then echo "ok $name"; else echo "FAIL $name: $(head -c 300 /tmp/out)"; fi; }

check create_and_read sh -c "echo hello > $m/a && [ \"\$(cat $m/a)\" = hello ]"
check append sh -c "echo world >> $m/a && [ \"\$(cat $m/a)\" = \"\$(printf 'hello\nworld')\" ]"
check truncate sh -c "truncate -s 3 $m/a && [ \"\$(cat $m/a)\" = hel ]"
check overwrite_in_place sh -c "printf 'XY' | dd of=$m/a bs=1 seek=1 conv=notrunc 2>/dev/null && [ \"\$(cat $m/a)\" = hXY ]"
check rename sh -c "mv $m/a $m/b && [ ! -e $m/a ] && [ \"\$(cat $m/b)\" = hXY ]"
check unlink sh -c "rm $m/b && [ ! -e $m/b ]"
check mkdir_rmdir sh -c "mkdir -p $m/d1/d2 && [ -d $m/d1/d2 ] && rmdir $m/d1/d2 $m/d1 && [ ! -e $m/d1 ]"
check rmdir_nonempty_fails sh -c "mkdir $m/ne && touch $m/ne/x && ! rmdir $m/ne 2>/dev/null; r=\$?; rm -r $m/ne; exit \$r"
check chmod sh -c "touch $m/c && chmod 640 $m/c && [ \"\$(stat -c %a $m/c)\" = 640 ]"
check chown sh -c "chown 1234:5678 $m/c && [ \"\$(stat -c %u:%g $m/c)\" = 1234:5678 ]"
check symlink sh -c "ln -s c $m/lnk && [ \"\$(readlink $m/lnk)\" = c ]"
check hardlink sh -c "echo hl > $m/h1 && ln $m/h1 $m/h2 && [ \"\$(stat -c %h $m/h1)\" = 2 ] && [ \"\$(cat $m/h2)\" = hl ]"
check xattrs sh -c "touch $m/x && $m/probe xattr $m/x"
check mmap_write sh -c "$m/probe mmap $m/mapped"
check big_file_hash sh -c "sha256sum $m/big | cut -d' ' -f1 > $m/big.guest-hash"
check ten_thousand_files sh -c "[ \"\$(ls $m/many | wc -l)\" = 10000 ]"
check write_visible_on_host sh -c "echo from-guest > $m/from-guest"
# Escapes: the host file 'outside-marker' sits next to the share, not in it.
check dotdot_stays_in_guest sh -c "! grep -q husk-outside-marker $m/../outside-marker 2>/dev/null"
check absolute_symlink_stays_in_guest sh -c "! grep -q husk-outside-marker $m/abs-link 2>/dev/null"
check relative_symlink_stays_in_guest sh -c "! grep -q husk-outside-marker $m/rel-link 2>/dev/null"
check read_only_refuses_writes sh -c "! (echo x > /ro/file) 2>/dev/null && ! rm /ro/file 2>/dev/null && ! mkdir /ro/new 2>/dev/null && [ \"\$(cat /ro/file)\" = keep ]"
check read_only_enforced_by_the_host sh -c "mount -o remount,rw /ro && ! (echo x > /ro/file) 2>/dev/null && ! rm /ro/file 2>/dev/null"
