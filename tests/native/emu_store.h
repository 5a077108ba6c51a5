/*
 * emu_store.h - recorders as folders, for the vendor-library emulations.
 *
 * Recorder i is $RECORDERS_ROOT/<i>/device.txt, "key=value" lines with raw
 * (GBK) text: id_code, serial, officer_no, officer_name, unit_no, unit_name,
 * password, battery, clock_offset_s, msdc, write_ignored. Unknown keys are
 * kept out of the way (ignored). Only this storage is shared by the
 * emulations; each one's exported API is written from a vendor's public
 * declarations, in its own file.
 */
#ifndef EMU_STORE_H
#define EMU_STORE_H

#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define EMU_MAX 64
#define EMU_DEVICES 64

typedef struct {
    char text[EMU_MAX + 1];
    size_t len;
} emu_text;

typedef struct {
    emu_text id_code, serial, officer_no, officer_name, unit_no, unit_name, password;
    long battery, clock_offset_s, msdc, write_ignored;
} emu_device;

static int emu_path(int index, const char *name, char *out, size_t size) {
    const char *root = getenv("RECORDERS_ROOT");
    int n;
    if (root == NULL || index < 0 || index >= EMU_DEVICES)
        return -1;
    n = name ? snprintf(out, size, "%s/%d/%s", root, index, name)
             : snprintf(out, size, "%s/%d", root, index);
    return (n < 0 || (size_t)n >= size) ? -1 : 0;
}

static int emu_present(int index) {
    char path[4096];
    struct stat st;
    return emu_path(index, NULL, path, sizeof path) == 0 && stat(path, &st) == 0 &&
           S_ISDIR(st.st_mode);
}

static __attribute__((unused)) int emu_count(void) {
    int n = 0;
    while (n < EMU_DEVICES && emu_present(n))
        n++;
    return n;
}

static emu_text *emu_field(emu_device *d, const char *key, size_t klen, long **num) {
    static const char *texts[] = {"id_code", "serial", "officer_no", "officer_name",
                                  "unit_no", "unit_name", "password"};
    emu_text *tf[] = {&d->id_code, &d->serial, &d->officer_no, &d->officer_name,
                      &d->unit_no, &d->unit_name, &d->password};
    static const char *nums[] = {"battery", "clock_offset_s", "msdc", "write_ignored"};
    long *nf[] = {&d->battery, &d->clock_offset_s, &d->msdc, &d->write_ignored};
    *num = NULL;
    for (size_t i = 0; i < 7; i++)
        if (strlen(texts[i]) == klen && memcmp(texts[i], key, klen) == 0)
            return tf[i];
    for (size_t i = 0; i < 4; i++)
        if (strlen(nums[i]) == klen && memcmp(nums[i], key, klen) == 0)
            *num = nf[i];
    return NULL;
}

/* 0 on success, -1 if the recorder is not there (or its file unreadable). */
static int emu_load(int index, emu_device *d) {
    char path[4096], buf[8192];
    FILE *f;
    size_t n, pos = 0;
    memset(d, 0, sizeof *d);
    if (!emu_present(index) || emu_path(index, "device.txt", path, sizeof path) != 0)
        return -1;
    f = fopen(path, "rb");
    if (f == NULL)
        return -1;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    while (pos < n) {
        char *line = buf + pos, *nl = memchr(line, '\n', n - pos), *eq;
        size_t len = nl ? (size_t)(nl - line) : n - pos;
        long *num;
        emu_text *t;
        pos += len + 1;
        eq = memchr(line, '=', len);
        if (eq == NULL)
            continue;
        t = emu_field(d, line, (size_t)(eq - line), &num);
        len -= (size_t)(eq - line) + 1;
        if (t != NULL && len <= EMU_MAX) {
            memcpy(t->text, eq + 1, len);
            t->text[len] = '\0';
            t->len = len;
        } else if (num != NULL) {
            char tmp[32] = {0};
            memcpy(tmp, eq + 1, len < 31 ? len : 31);
            *num = strtol(tmp, NULL, 10);
        }
    }
    return 0;
}

static int emu_save(int index, const emu_device *d) {
    char path[4096], tmp[4096];
    FILE *f;
    const emu_text *tf[] = {&d->id_code, &d->serial, &d->officer_no, &d->officer_name,
                            &d->unit_no, &d->unit_name, &d->password};
    static const char *texts[] = {"id_code", "serial", "officer_no", "officer_name",
                                  "unit_no", "unit_name", "password"};
    if (emu_path(index, "device.txt", path, sizeof path) != 0 ||
        emu_path(index, "device.tmp", tmp, sizeof tmp) != 0 || !emu_present(index))
        return -1;
    f = fopen(tmp, "wb");
    if (f == NULL)
        return -1;
    for (size_t i = 0; i < 7; i++) {
        fprintf(f, "%s=", texts[i]);
        fwrite(tf[i]->text, 1, tf[i]->len, f);
        fputc('\n', f);
    }
    fprintf(f, "battery=%ld\nclock_offset_s=%ld\nmsdc=%ld\nwrite_ignored=%ld\n", d->battery,
            d->clock_offset_s, d->msdc, d->write_ignored);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

static int emu_password_ok(const emu_device *d, const char *pwd) {
    return pwd != NULL && strlen(pwd) == d->password.len &&
           memcmp(pwd, d->password.text, d->password.len) == 0;
}

/* Copy a text into a field of `size` bytes with `term` NUL bytes reserved; -1 if too long. */
static int emu_to_field(char *field, size_t size, int term, const emu_text *t) {
    if (t->len > size - (size_t)term)
        return -1;
    memset(field, 0, size);
    memcpy(field, t->text, t->len);
    return 0;
}

static void emu_from_field(emu_text *t, const char *field, size_t size) {
    size_t len = strnlen(field, size);
    memcpy(t->text, field, len);
    t->text[len] = '\0';
    t->len = len;
}

#endif
