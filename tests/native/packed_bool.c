/*
 * packed_bool.c - emulation of a vendor library with the packed ZFY_INFO,
 * C `bool` returns and an `unsigned short` status, written from that family's
 * public declarations:
 *
 *     typedef struct { char cSerial[7]; char userNo[6]; char userName[32];
 *                      char unitNo[12]; char unitName[32]; } ZFY_INFO;   (89 bytes)
 *     bool Init_Device(char *IDCode, unsigned short *iRet);
 *     bool Uninit_Device(char *IDCode, unsigned short *iRet);
 *     bool GetIDCode(char *IDCode, unsigned short *iRet);
 *     bool GetZFYInfo(ZFY_INFO *info, char *sPwd, unsigned short *iRet);
 *     bool WriteZFYInfo(ZFY_INFO *info, char *sPwd, unsigned short *iRet);
 *     bool SyncDevTime(char *sPwd, unsigned short *iRet);
 *     bool SetMSDC(char *sPwd, unsigned short *iRet);
 *     bool ReadDeviceResolution(int *Width, int *Height, char *sPwd, unsigned short *iRet);
 *     bool ReadDeviceBatteryDumpEnergy(int *Battery, char *sPwd, unsigned short *iRet);
 *
 * One recorder (index 0 of emu_store.h). As that family's code does, a write
 * answers true and sets *iRet only when the recorder took it: a recorder with
 * write_ignored=1 answers true with status 0 and keeps its block.
 *
 * -DINPUT_IDCODE: Init_Device takes the ID code as input and connects only to
 *  a recorder with that code. -DPWD_CONNECT_FAILED: a wrong password is
 *  reported as CONNECT_FAILED, as some libraries do.
 */
#include "emu_store.h"

#include <stdbool.h>

#pragma pack(push, 1)
typedef struct {
    char cSerial[7];
    char userNo[6];
    char userName[32];
    char unitNo[12];
    char unitName[32];
} ZFY_INFO;
#pragma pack(pop)
_Static_assert(sizeof(ZFY_INFO) == 89, "packed ZFY_INFO is 89 bytes");

enum { CONNECT_SUCCESS = 1, CONNECT_FAILED, CHECK_PWD_SUCCESS, CHECK_PWD_FAILED,
       SET_SYSTEMTIME_SUCCESS, SET_SYSTEMTIME_FAILED, MSDC_SUCCESS, MSDC_FAILED };

#ifdef PWD_CONNECT_FAILED
#define WRONG_PASSWORD CONNECT_FAILED
#else
#define WRONG_PASSWORD CHECK_PWD_FAILED
#endif

static bool fail(unsigned short *iRet, unsigned short code) {
    *iRet = code;
    return false;
}

/* Load recorder 0 and check the password: false with *iRet set on failure. */
static bool checked(const char *pwd, emu_device *d, unsigned short *iRet) {
    if (emu_load(0, d) != 0)
        return fail(iRet, CONNECT_FAILED);
    if (!emu_password_ok(d, pwd))
        return fail(iRet, WRONG_PASSWORD);
    return true;
}

bool Init_Device(char *IDCode, unsigned short *iRet) {
    emu_device d;
    if (emu_load(0, &d) != 0)
        return fail(iRet, CONNECT_FAILED);
#ifdef INPUT_IDCODE
    if (IDCode == NULL || strcmp(IDCode, d.id_code.text) != 0)
        return fail(iRet, CONNECT_FAILED);
#else
    memcpy(IDCode, d.id_code.text, d.id_code.len + 1);
#endif
    *iRet = CONNECT_SUCCESS;
    return true;
}

bool Uninit_Device(char *IDCode, unsigned short *iRet) {
    (void)IDCode;
    *iRet = CONNECT_SUCCESS;
    return true;
}

bool GetIDCode(char *IDCode, unsigned short *iRet) {
    emu_device d;
    if (emu_load(0, &d) != 0)
        return fail(iRet, CONNECT_FAILED);
    memcpy(IDCode, d.id_code.text, d.id_code.len + 1);
    *iRet = CONNECT_SUCCESS;
    return true;
}

bool GetZFYInfo(ZFY_INFO *info, char *sPwd, unsigned short *iRet) {
    emu_device d;
    ZFY_INFO out;
    if (!checked(sPwd, &d, iRet))
        return false;
    if (emu_to_field(out.cSerial, 7, 0, &d.serial) || emu_to_field(out.userNo, 6, 0, &d.officer_no) ||
        emu_to_field(out.userName, 32, 0, &d.officer_name) ||
        emu_to_field(out.unitNo, 12, 0, &d.unit_no) || emu_to_field(out.unitName, 32, 0, &d.unit_name))
        return fail(iRet, 100);
    memcpy(info, &out, sizeof out);
    *iRet = CONNECT_SUCCESS;
    return true;
}

bool WriteZFYInfo(ZFY_INFO *info, char *sPwd, unsigned short *iRet) {
    emu_device d;
    if (!checked(sPwd, &d, iRet))
        return false;
    *iRet = 0; /* set only when the recorder took the block */
    if (d.write_ignored)
        return true;
    emu_from_field(&d.serial, info->cSerial, 7);
    emu_from_field(&d.officer_no, info->userNo, 6);
    emu_from_field(&d.officer_name, info->userName, 32);
    emu_from_field(&d.unit_no, info->unitNo, 12);
    emu_from_field(&d.unit_name, info->unitName, 32);
    if (emu_save(0, &d) == 0)
        *iRet = CONNECT_SUCCESS;
    return true;
}

bool SyncDevTime(char *sPwd, unsigned short *iRet) {
    emu_device d;
    if (!checked(sPwd, &d, iRet))
        return false;
    d.clock_offset_s = 0;
    if (emu_save(0, &d) != 0)
        return fail(iRet, SET_SYSTEMTIME_FAILED);
    *iRet = SET_SYSTEMTIME_SUCCESS;
    return true;
}

bool SetMSDC(char *sPwd, unsigned short *iRet) {
    emu_device d;
    if (!checked(sPwd, &d, iRet))
        return false;
    d.msdc = 1;
    if (emu_save(0, &d) != 0)
        return fail(iRet, MSDC_FAILED);
    *iRet = MSDC_SUCCESS;
    return true;
}

bool ReadDeviceResolution(int *Width, int *Height, char *sPwd, unsigned short *iRet) {
    emu_device d;
    if (!checked(sPwd, &d, iRet))
        return false;
    *Width = 1920;
    *Height = 1080;
    *iRet = CONNECT_SUCCESS;
    return true;
}

bool ReadDeviceBatteryDumpEnergy(int *Battery, char *sPwd, unsigned short *iRet) {
    emu_device d;
    if (!checked(sPwd, &d, iRet))
        return false;
    *Battery = (int)d.battery;
    *iRet = CONNECT_SUCCESS;
    return true;
}
