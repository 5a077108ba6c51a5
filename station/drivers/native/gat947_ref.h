/*
 * gat947_ref.h - a reference GA/T 947.4 recorder library, backed by folders.
 *
 * The functions and status codes are those every vendor library ships
 * (shared/GAT947.md section 1, the canonical EYLOG_DLL.h), plus a device count
 * and "_ByIndex" variants taking the device index as their last argument. That
 * multi-device API is this project's own: no vendor's public code has
 * GetDeviceCount (Falcon-style libraries use Init_Device_UsbTotal instead, see
 * docs/vendor-library.md). Every call returns 1 on success and 0 on failure
 * and writes a status code into *iRet.
 *
 * Device i is the folder $GAT947_REF_ROOT/<i>/ holding device.txt; calls
 * without an index address device 0. See docs/vendor-library.md.
 */
#ifndef GAT947_REF_H
#define GAT947_REF_H

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes written into *iRet (GA/T 947.4). */
#define CONNECT_SUCCESS 1
#define CONNECT_FAILED 2
#define CHECK_PWD_SUCCESS 3
#define CHECK_PWD_FAILED 4
#define SET_SYSTEMTIME_SUCCESS 5
#define SET_SYSTEMTIME_FAILED 6
#define MSDC_SUCCESS 7
#define MSDC_FAILED 8
/* Reference-library extensions, as vendors add their own codes. */
#define GAT947_REF_DEVICE_FILE_ERROR 100 /* device.txt malformed or not writable */
#define GAT947_REF_BAD_ARGUMENT 101      /* NULL pointer, unterminated or bad field */

/* Room the caller must provide for an ID code (at most 15 bytes and a NUL). */
#define GAT947_REF_IDCODE_SIZE 16

/*
 * The officer block, text in GBK. The common layout has NUL-terminated fields
 * (94 bytes); compiled with -DZFY_PACKED the older packed layout holds the same
 * text without terminators (89 bytes). Either way a field holds at most
 * 7, 6, 32, 12 and 32 bytes of text.
 */
#ifdef ZFY_PACKED
#define ZFY_TERM 0
#else
#define ZFY_TERM 1
#endif

typedef struct {
    char cSerial[7 + ZFY_TERM];   /* product serial, never empty */
    char userNo[6 + ZFY_TERM];    /* officer number, never empty */
    char userName[32 + ZFY_TERM]; /* officer name, may be empty */
    char unitNo[12 + ZFY_TERM];   /* unit number, may be empty */
    char unitName[32 + ZFY_TERM]; /* unit name, may be empty */
} ZFY_INFO;

int Init_Device(char *IDCode, int *iRet);
void UnInit_Device(int *iRet);
int GetIDCode(char *IDCode, int *iRet);
int GetZFYInfo(ZFY_INFO *info, char *sPwd, int *iRet);
int WriteZFYInfo(ZFY_INFO *info, char *sPwd, int *iRet);
int SyncDevTime(char *sPwd, int *iRet);
int SetMSDC(char *sPwd, int *iRet);
int ReadDeviceResolution(int *Width, int *Height, char *sPwd, int *iRet);
int ReadDeviceBatteryDumpEnergy(int *Battery, char *sPwd, int *iRet);

/* Several recorders on one host: the count (not 1/0) is returned. */
int GetDeviceCount(int *iRet);
int Init_Device_ByIndex(char *IDCode, int *iRet, int index);
void UnInit_Device_ByIndex(int *iRet, int index);
int GetIDCode_ByIndex(char *IDCode, int *iRet, int index);
int GetZFYInfo_ByIndex(ZFY_INFO *info, char *sPwd, int *iRet, int index);
int WriteZFYInfo_ByIndex(ZFY_INFO *info, char *sPwd, int *iRet, int index);
int SyncDevTime_ByIndex(char *sPwd, int *iRet, int index);
int SetMSDC_ByIndex(char *sPwd, int *iRet, int index);
int ReadDeviceResolution_ByIndex(int *Width, int *Height, char *sPwd, int *iRet, int index);
int ReadDeviceBatteryDumpEnergy_ByIndex(int *Battery, char *sPwd, int *iRet, int index);

#ifdef __cplusplus
}
#endif

#endif /* GAT947_REF_H */
