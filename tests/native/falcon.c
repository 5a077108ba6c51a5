/*
 * falcon.c - emulation of a Falcon-style vendor library, written from its
 * public declarations: the canonical EYLOG_DLL.h calls (int returns, int
 * *iRet, the 94-byte ZFY_INFO with NUL-terminated fields) addressing "the"
 * recorder, and the multi-device calls of its interop declarations:
 *
 *     int Init_Device_UsbTotal(char *IDCode, int *iRet, int *Usb_TotalNum);
 *     int GetZFYInfo_ByIndex(ZFY_INFO *info, char *sPwd, int *iRet, int usb_index);
 *     int WriteZFYInfo_ByIndex(ZFY_INFO *info, char *sPwd, int *iRet, int usb_index);
 *     int SetMSDC_ByIndex(char *sPwd, int *iRet, int usb_index);
 *     int ReadDeviceBatteryDumpEnergy_ByIndex(int *Battery, char *sPwd, int *iRet,
 *                                             int usb_index);
 *
 * There is no GetIDCode_ByIndex, SyncDevTime_ByIndex or UnInit_Device_ByIndex.
 * Recorder i is index i of emu_store.h; the plain calls address index 0.
 * -DNO_INDEX leaves the multi-device calls out (one recorder at a time).
 */
#include "emu_store.h"

typedef struct {
    char cSerial[8];
    char userNo[7];
    char userName[33];
    char unitNo[13];
    char unitName[33];
} ZFY_INFO;
_Static_assert(sizeof(ZFY_INFO) == 94, "ZFY_INFO is 94 bytes");

enum { CONNECT_SUCCESS = 1, CONNECT_FAILED, CHECK_PWD_SUCCESS, CHECK_PWD_FAILED,
       SET_SYSTEMTIME_SUCCESS, SET_SYSTEMTIME_FAILED, MSDC_SUCCESS, MSDC_FAILED };

#ifdef NO_INDEX
#define MULTI static __attribute__((unused))
#else
#define MULTI
#endif

static int fail(int *iRet, int code) {
    *iRet = code;
    return 0;
}

static int checked(int index, const char *pwd, emu_device *d, int *iRet) {
    if (emu_load(index, d) != 0)
        return fail(iRet, CONNECT_FAILED);
    if (!emu_password_ok(d, pwd))
        return fail(iRet, CHECK_PWD_FAILED);
    return 1;
}

MULTI int Init_Device_UsbTotal(char *IDCode, int *iRet, int *Usb_TotalNum) {
    emu_device d;
    int n = emu_count();
    *Usb_TotalNum = n;
    if (n == 0)
        return fail(iRet, CONNECT_FAILED);
    if (emu_load(0, &d) == 0)
        memcpy(IDCode, d.id_code.text, d.id_code.len + 1);
    *iRet = CONNECT_SUCCESS;
    return 1;
}

MULTI int GetZFYInfo_ByIndex(ZFY_INFO *info, char *sPwd, int *iRet, int usb_index) {
    emu_device d;
    ZFY_INFO out;
    if (!checked(usb_index, sPwd, &d, iRet))
        return 0;
    if (emu_to_field(out.cSerial, 8, 1, &d.serial) || emu_to_field(out.userNo, 7, 1, &d.officer_no) ||
        emu_to_field(out.userName, 33, 1, &d.officer_name) ||
        emu_to_field(out.unitNo, 13, 1, &d.unit_no) || emu_to_field(out.unitName, 33, 1, &d.unit_name))
        return fail(iRet, 100);
    memcpy(info, &out, sizeof out);
    *iRet = CONNECT_SUCCESS;
    return 1;
}

MULTI int WriteZFYInfo_ByIndex(ZFY_INFO *info, char *sPwd, int *iRet, int usb_index) {
    emu_device d;
    if (!checked(usb_index, sPwd, &d, iRet))
        return 0;
    if (d.write_ignored) { /* answers success, keeps its block */
        *iRet = 0;
        return 1;
    }
    emu_from_field(&d.serial, info->cSerial, 7);
    emu_from_field(&d.officer_no, info->userNo, 6);
    emu_from_field(&d.officer_name, info->userName, 32);
    emu_from_field(&d.unit_no, info->unitNo, 12);
    emu_from_field(&d.unit_name, info->unitName, 32);
    if (emu_save(usb_index, &d) != 0)
        return fail(iRet, CONNECT_FAILED);
    *iRet = CONNECT_SUCCESS;
    return 1;
}

MULTI int SetMSDC_ByIndex(char *sPwd, int *iRet, int usb_index) {
    emu_device d;
    if (!checked(usb_index, sPwd, &d, iRet))
        return 0;
    d.msdc = 1;
    if (emu_save(usb_index, &d) != 0)
        return fail(iRet, MSDC_FAILED);
    *iRet = MSDC_SUCCESS;
    return 1;
}

MULTI int ReadDeviceBatteryDumpEnergy_ByIndex(int *Battery, char *sPwd, int *iRet, int usb_index) {
    emu_device d;
    if (!checked(usb_index, sPwd, &d, iRet))
        return 0;
    *Battery = (int)d.battery;
    *iRet = CONNECT_SUCCESS;
    return 1;
}

int Init_Device(char *IDCode, int *iRet) {
    emu_device d;
    if (emu_load(0, &d) != 0)
        return fail(iRet, CONNECT_FAILED);
    memcpy(IDCode, d.id_code.text, d.id_code.len + 1);
    *iRet = CONNECT_SUCCESS;
    return 1;
}

void UnInit_Device(int *iRet) { *iRet = CONNECT_SUCCESS; }

int GetIDCode(char *IDCode, int *iRet) { return Init_Device(IDCode, iRet); }

int GetZFYInfo(ZFY_INFO *info, char *sPwd, int *iRet) {
    return GetZFYInfo_ByIndex(info, sPwd, iRet, 0);
}

int WriteZFYInfo(ZFY_INFO *info, char *sPwd, int *iRet) {
    return WriteZFYInfo_ByIndex(info, sPwd, iRet, 0);
}

int SyncDevTime(char *sPwd, int *iRet) {
    emu_device d;
    if (!checked(0, sPwd, &d, iRet))
        return 0;
    d.clock_offset_s = 0;
    if (emu_save(0, &d) != 0)
        return fail(iRet, SET_SYSTEMTIME_FAILED);
    *iRet = SET_SYSTEMTIME_SUCCESS;
    return 1;
}

int SetMSDC(char *sPwd, int *iRet) { return SetMSDC_ByIndex(sPwd, iRet, 0); }

int ReadDeviceResolution(int *Width, int *Height, char *sPwd, int *iRet) {
    emu_device d;
    if (!checked(0, sPwd, &d, iRet))
        return 0;
    *Width = 1920;
    *Height = 1080;
    *iRet = CONNECT_SUCCESS;
    return 1;
}

int ReadDeviceBatteryDumpEnergy(int *Battery, char *sPwd, int *iRet) {
    return ReadDeviceBatteryDumpEnergy_ByIndex(Battery, sPwd, iRet, 0);
}
