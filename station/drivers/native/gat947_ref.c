/*
 * gat947_ref.c - a reference GA/T 947.4 recorder library, backed by folders.
 *
 * It implements the library interface of shared/GAT947.md section 1 (plus
 * GetDeviceCount and the _ByIndex variants, the project's own multi-device
 * API) the way a vendor's library does,
 * so that the station's vendor-library driver can be exercised through the
 * real C ABI. A recorder is a folder:
 *
 *     $GAT947_REF_ROOT/<index>/device.txt
 *
 * holding "key=value" lines (blank lines and lines starting with '#' are
 * skipped; text values are raw bytes, GBK as a recorder stores them, at most
 * 64 bytes):
 *
 *     id_code        ID code returned by Init_Device/GetIDCode (<= 15 bytes)
 *     serial, officer_no, officer_name, unit_no, unit_name   the officer block
 *     password       device password (required)
 *     battery        percent, returned as stored (default 0)
 *     clock_offset_s recorder clock minus true time; SyncDevTime zeroes it
 *     msdc           0 or 1; SetMSDC sets it to 1
 *     width, height  recording resolution (default 1920 x 1080)
 *
 * Calls without an index address device 0. A missing device folder or
 * device.txt is CONNECT_FAILED; a malformed device.txt is the extension code
 * GAT947_REF_DEVICE_FILE_ERROR. Writes rewrite device.txt atomically (comments
 * are not kept). The library keeps no state between calls.
 *
 * Build: cc -shared -fPIC -O2 -Wall -Werror [-DZFY_PACKED] [-DGAT947_REF_NO_INDEX] \
 *            -o libgat947ref.so gat947_ref.c
 * -DZFY_PACKED selects the packed 89-byte officer block; -DGAT947_REF_NO_INDEX
 * leaves out the multi-device calls (a single-device library);
 * -DGAT947_REF_NO_UNINIT leaves out the release calls (UnInit_Device and
 * UnInit_Device_ByIndex), as many vendor libraries have none;
 * -DGAT947_REF_HANG builds a library that hangs: Init_Device(_ByIndex) does not
 * return while the recorder's folder holds a file "hang_init", nor
 * GetZFYInfo(_ByIndex) while it holds "hang_info" (as a vendor call stuck on a
 * wedged USB transfer; removing the file lets the call go on).
 */
#define _POSIX_C_SOURCE 200809L

#include "gat947_ref.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef ZFY_PACKED
_Static_assert(sizeof(ZFY_INFO) == 89, "packed ZFY_INFO must be 89 bytes");
#else
_Static_assert(sizeof(ZFY_INFO) == 94, "ZFY_INFO must be 94 bytes");
#endif

#define MAX_DEVICES 64
#define MAX_VALUE 64
#define MAX_FILE 4096
#define MAX_PASSWORD 64
#define MAX_PATH 4096
#define DEVICE_FILE "device.txt"
#define DEVICE_TMP "device.txt.tmp"

typedef struct {
    char text[MAX_VALUE + 1];
    size_t len;
} text_t;

typedef struct {
    text_t id_code, serial, officer_no, officer_name, unit_no, unit_name, password;
    long battery, clock_offset_s, msdc, width, height;
} device_t;

enum kind { TEXT, NUMBER };

static const struct {
    const char *key;
    enum kind kind;
    size_t offset;
} KEYS[] = {
    {"id_code", TEXT, offsetof(device_t, id_code)},
    {"serial", TEXT, offsetof(device_t, serial)},
    {"officer_no", TEXT, offsetof(device_t, officer_no)},
    {"officer_name", TEXT, offsetof(device_t, officer_name)},
    {"unit_no", TEXT, offsetof(device_t, unit_no)},
    {"unit_name", TEXT, offsetof(device_t, unit_name)},
    {"password", TEXT, offsetof(device_t, password)},
    {"battery", NUMBER, offsetof(device_t, battery)},
    {"clock_offset_s", NUMBER, offsetof(device_t, clock_offset_s)},
    {"msdc", NUMBER, offsetof(device_t, msdc)},
    {"width", NUMBER, offsetof(device_t, width)},
    {"height", NUMBER, offsetof(device_t, height)},
};
#define NKEYS (sizeof KEYS / sizeof KEYS[0])
#define PASSWORD_KEY 6

/* ---- helpers ------------------------------------------------------------ */

static int fail(int *iRet, int code) {
    *iRet = code;
    return 0;
}

/* $GAT947_REF_ROOT/<index>[/name] into out; -1 if unset, out of range or too long. */
static int device_path(int index, const char *name, char *out, size_t size) {
    const char *root = getenv("GAT947_REF_ROOT");
    int n;
    if (root == NULL || root[0] == '\0' || index < 0 || index >= MAX_DEVICES)
        return -1;
    if (name != NULL)
        n = snprintf(out, size, "%s/%d/%s", root, index, name);
    else
        n = snprintf(out, size, "%s/%d", root, index);
    return (n < 0 || (size_t)n >= size) ? -1 : 0;
}

static int present(int index) {
    char path[MAX_PATH];
    struct stat st;
    if (device_path(index, NULL, path, sizeof path) != 0)
        return 0;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int parse_number(const char *s, size_t len, long *out) {
    char buf[32];
    char *end;
    long v;
    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    errno = 0;
    v = strtol(buf, &end, 10);
    if (errno != 0 || *end != '\0' || v < INT_MIN || v > INT_MAX)
        return -1;
    *out = v;
    return 0;
}

static int set_value(device_t *d, size_t k, const char *value, size_t len) {
    char *base = (char *)d + KEYS[k].offset;
    if (KEYS[k].kind == NUMBER)
        return parse_number(value, len, (long *)(void *)base);
    text_t *t = (text_t *)(void *)base;
    if (len > MAX_VALUE)
        return -1;
    memcpy(t->text, value, len);
    t->text[len] = '\0';
    t->len = len;
    return 0;
}

static int parse(device_t *d, const char *buf, size_t n) {
    int have_password = 0;
    size_t pos = 0;
    memset(d, 0, sizeof *d);
    d->width = 1920;
    d->height = 1080;
    while (pos < n) {
        const char *line = buf + pos;
        const char *nl = memchr(line, '\n', n - pos);
        size_t len = nl ? (size_t)(nl - line) : n - pos;
        pos += len + (nl ? 1 : 0);
        if (len > 0 && line[len - 1] == '\r')
            len--;
        if (len == 0 || line[0] == '#')
            continue;
        const char *eq = memchr(line, '=', len);
        if (eq == NULL)
            return -1;
        size_t klen = (size_t)(eq - line);
        size_t k;
        for (k = 0; k < NKEYS; k++)
            if (strlen(KEYS[k].key) == klen && memcmp(KEYS[k].key, line, klen) == 0)
                break;
        if (k == NKEYS || set_value(d, k, eq + 1, len - klen - 1) != 0)
            return -1;
        if (k == PASSWORD_KEY)
            have_password = 1;
    }
    if (!have_password || (d->msdc != 0 && d->msdc != 1))
        return -1;
    return 0;
}

/* Read device <index>: 0, CONNECT_FAILED or GAT947_REF_DEVICE_FILE_ERROR. */
static int load(int index, device_t *d) {
    char path[MAX_PATH];
    char buf[MAX_FILE + 1];
    FILE *f;
    size_t n;
    int bad;
    if (!present(index) || device_path(index, DEVICE_FILE, path, sizeof path) != 0)
        return CONNECT_FAILED;
    f = fopen(path, "rb");
    if (f == NULL)
        return errno == ENOENT ? CONNECT_FAILED : GAT947_REF_DEVICE_FILE_ERROR;
    n = fread(buf, 1, sizeof buf, f);
    bad = ferror(f) || n > MAX_FILE || memchr(buf, '\0', n) != NULL;
    fclose(f);
    if (bad || parse(d, buf, n) != 0)
        return GAT947_REF_DEVICE_FILE_ERROR;
    return 0;
}

static int write_text(FILE *f, const char *key, const text_t *t) {
    return fprintf(f, "%s=", key) < 0 || fwrite(t->text, 1, t->len, f) != t->len ||
           fputc('\n', f) == EOF;
}

/* Rewrite device <index> atomically: 0, CONNECT_FAILED or GAT947_REF_DEVICE_FILE_ERROR. */
static int save(int index, const device_t *d) {
    char path[MAX_PATH], tmp[MAX_PATH];
    FILE *f;
    int err = 0;
    size_t k;
    if (!present(index) || device_path(index, DEVICE_FILE, path, sizeof path) != 0 ||
        device_path(index, DEVICE_TMP, tmp, sizeof tmp) != 0)
        return CONNECT_FAILED;
    f = fopen(tmp, "wb");
    if (f == NULL)
        return present(index) ? GAT947_REF_DEVICE_FILE_ERROR : CONNECT_FAILED;
    for (k = 0; k < NKEYS && !err; k++) {
        const char *base = (const char *)d + KEYS[k].offset;
        if (KEYS[k].kind == TEXT)
            err = write_text(f, KEYS[k].key, (const text_t *)(const void *)base);
        else
            err = fprintf(f, "%s=%ld\n", KEYS[k].key, *(const long *)(const void *)base) < 0;
    }
    err |= fflush(f) != 0 || fsync(fileno(f)) != 0;
    err |= fclose(f) != 0;
    if (err || rename(tmp, path) != 0) {
        unlink(tmp);
        return present(index) ? GAT947_REF_DEVICE_FILE_ERROR : CONNECT_FAILED;
    }
    return 0;
}

static int password_ok(const device_t *d, const char *pwd) {
    size_t n;
    if (pwd == NULL)
        return 0;
    n = strnlen(pwd, MAX_PASSWORD + 1);
    return n == d->password.len && memcmp(pwd, d->password.text, n) == 0;
}

/* Load device <index> and check the password; on failure *iRet is set, 0 returned. */
static int open_checked(int index, const char *pwd, device_t *d, int *iRet) {
    int st = load(index, d);
    if (st != 0)
        return fail(iRet, st);
    if (!password_ok(d, pwd))
        return fail(iRet, CHECK_PWD_FAILED);
    return 1;
}

/* Officer block fields: text into a field of `size` bytes, and back. */
static int to_field(char *field, size_t size, const text_t *t) {
    if (t->len > size - ZFY_TERM)
        return -1;
    memset(field, 0, size);
    memcpy(field, t->text, t->len);
    return 0;
}

static int from_field(text_t *t, const char *field, size_t size) {
    size_t len = strnlen(field, size);
    if ((ZFY_TERM && len == size) || len > MAX_VALUE || memchr(field, '\n', len) != NULL ||
        memchr(field, '\r', len) != NULL)
        return -1;
    memcpy(t->text, field, len);
    t->text[len] = '\0';
    t->len = len;
    return 0;
}

#define FIELD(info, name) (info)->name, sizeof (info)->name

/* -DGAT947_REF_NO_INDEX builds a single-device library, as many vendors ship one:
   the device count and the _ByIndex calls are then not exported. */
#ifdef GAT947_REF_NO_INDEX
#define MULTI __attribute__((visibility("hidden")))
#else
#define MULTI
#endif

/* ---- the library interface ------------------------------------------------ */

MULTI int GetDeviceCount(int *iRet) {
    const char *root = getenv("GAT947_REF_ROOT");
    int n = 0;
    if (iRet == NULL)
        return 0;
    if (root == NULL || root[0] == '\0')
        return fail(iRet, CONNECT_FAILED);
    while (n < MAX_DEVICES && present(n))
        n++;
    *iRet = CONNECT_SUCCESS;
    return n;
}

MULTI int GetIDCode_ByIndex(char *IDCode, int *iRet, int index) {
    device_t d;
    int st;
    if (iRet == NULL)
        return 0;
    if (IDCode == NULL)
        return fail(iRet, GAT947_REF_BAD_ARGUMENT);
    st = load(index, &d);
    if (st != 0)
        return fail(iRet, st);
    if (d.id_code.len >= GAT947_REF_IDCODE_SIZE)
        return fail(iRet, GAT947_REF_DEVICE_FILE_ERROR);
    memcpy(IDCode, d.id_code.text, d.id_code.len + 1);
    *iRet = CONNECT_SUCCESS;
    return 1;
}

#ifdef GAT947_REF_HANG
/* Block while $GAT947_REF_ROOT/<index>/<name> exists. */
static void hang_while(int index, const char *name) {
    char path[MAX_PATH];
    struct stat st;
    struct timespec tick = {0, 10 * 1000 * 1000};
    if (device_path(index, name, path, sizeof path) != 0)
        return;
    while (stat(path, &st) == 0)
        nanosleep(&tick, NULL);
}
#else
#define hang_while(index, name) ((void)0)
#endif

MULTI int Init_Device_ByIndex(char *IDCode, int *iRet, int index) {
    hang_while(index, "hang_init");
    return GetIDCode_ByIndex(IDCode, iRet, index);
}

#ifndef GAT947_REF_NO_UNINIT
MULTI void UnInit_Device_ByIndex(int *iRet, int index) {
    (void)index;
    if (iRet != NULL)
        *iRet = CONNECT_SUCCESS;
}
#endif

MULTI int GetZFYInfo_ByIndex(ZFY_INFO *info, char *sPwd, int *iRet, int index) {
    device_t d;
    ZFY_INFO out;
    hang_while(index, "hang_info");
    if (iRet == NULL)
        return 0;
    if (info == NULL)
        return fail(iRet, GAT947_REF_BAD_ARGUMENT);
    if (!open_checked(index, sPwd, &d, iRet))
        return 0;
    if (to_field(FIELD(&out, cSerial), &d.serial) != 0 ||
        to_field(FIELD(&out, userNo), &d.officer_no) != 0 ||
        to_field(FIELD(&out, userName), &d.officer_name) != 0 ||
        to_field(FIELD(&out, unitNo), &d.unit_no) != 0 ||
        to_field(FIELD(&out, unitName), &d.unit_name) != 0)
        return fail(iRet, GAT947_REF_DEVICE_FILE_ERROR);
    memcpy(info, &out, sizeof out);
    *iRet = CONNECT_SUCCESS;
    return 1;
}

MULTI int WriteZFYInfo_ByIndex(ZFY_INFO *info, char *sPwd, int *iRet, int index) {
    device_t d;
    int st;
    if (iRet == NULL)
        return 0;
    if (info == NULL)
        return fail(iRet, GAT947_REF_BAD_ARGUMENT);
    if (!open_checked(index, sPwd, &d, iRet))
        return 0;
    if (from_field(&d.serial, FIELD(info, cSerial)) != 0 ||
        from_field(&d.officer_no, FIELD(info, userNo)) != 0 ||
        from_field(&d.officer_name, FIELD(info, userName)) != 0 ||
        from_field(&d.unit_no, FIELD(info, unitNo)) != 0 ||
        from_field(&d.unit_name, FIELD(info, unitName)) != 0 || d.serial.len == 0 ||
        d.officer_no.len == 0)
        return fail(iRet, GAT947_REF_BAD_ARGUMENT);
    st = save(index, &d);
    if (st != 0)
        return fail(iRet, st);
    *iRet = CONNECT_SUCCESS;
    return 1;
}

MULTI int SyncDevTime_ByIndex(char *sPwd, int *iRet, int index) {
    device_t d;
    int st;
    if (iRet == NULL)
        return 0;
    if (!open_checked(index, sPwd, &d, iRet))
        return 0;
    d.clock_offset_s = 0;
    st = save(index, &d);
    if (st != 0)
        return fail(iRet, st == CONNECT_FAILED ? CONNECT_FAILED : SET_SYSTEMTIME_FAILED);
    *iRet = SET_SYSTEMTIME_SUCCESS;
    return 1;
}

MULTI int SetMSDC_ByIndex(char *sPwd, int *iRet, int index) {
    device_t d;
    int st;
    if (iRet == NULL)
        return 0;
    if (!open_checked(index, sPwd, &d, iRet))
        return 0;
    d.msdc = 1;
    st = save(index, &d);
    if (st != 0)
        return fail(iRet, st == CONNECT_FAILED ? CONNECT_FAILED : MSDC_FAILED);
    *iRet = MSDC_SUCCESS;
    return 1;
}

MULTI int ReadDeviceResolution_ByIndex(int *Width, int *Height, char *sPwd, int *iRet, int index) {
    device_t d;
    if (iRet == NULL)
        return 0;
    if (Width == NULL || Height == NULL)
        return fail(iRet, GAT947_REF_BAD_ARGUMENT);
    if (!open_checked(index, sPwd, &d, iRet))
        return 0;
    *Width = (int)d.width; /* parse() keeps numbers within int range */
    *Height = (int)d.height;
    *iRet = CONNECT_SUCCESS;
    return 1;
}

MULTI int ReadDeviceBatteryDumpEnergy_ByIndex(int *Battery, char *sPwd, int *iRet, int index) {
    device_t d;
    if (iRet == NULL)
        return 0;
    if (Battery == NULL)
        return fail(iRet, GAT947_REF_BAD_ARGUMENT);
    if (!open_checked(index, sPwd, &d, iRet))
        return 0;
    *Battery = (int)d.battery;
    *iRet = CONNECT_SUCCESS;
    return 1;
}

/* The single-device interface addresses device 0. */

int Init_Device(char *IDCode, int *iRet) { return Init_Device_ByIndex(IDCode, iRet, 0); }

#ifndef GAT947_REF_NO_UNINIT
void UnInit_Device(int *iRet) { UnInit_Device_ByIndex(iRet, 0); }
#endif

int GetIDCode(char *IDCode, int *iRet) { return GetIDCode_ByIndex(IDCode, iRet, 0); }

int GetZFYInfo(ZFY_INFO *info, char *sPwd, int *iRet) {
    return GetZFYInfo_ByIndex(info, sPwd, iRet, 0);
}

int WriteZFYInfo(ZFY_INFO *info, char *sPwd, int *iRet) {
    return WriteZFYInfo_ByIndex(info, sPwd, iRet, 0);
}

int SyncDevTime(char *sPwd, int *iRet) { return SyncDevTime_ByIndex(sPwd, iRet, 0); }

int SetMSDC(char *sPwd, int *iRet) { return SetMSDC_ByIndex(sPwd, iRet, 0); }

int ReadDeviceResolution(int *Width, int *Height, char *sPwd, int *iRet) {
    return ReadDeviceResolution_ByIndex(Width, Height, sPwd, iRet, 0);
}

int ReadDeviceBatteryDumpEnergy(int *Battery, char *sPwd, int *iRet) {
    return ReadDeviceBatteryDumpEnergy_ByIndex(Battery, sPwd, iRet, 0);
}
