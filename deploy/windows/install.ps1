# Installs bems-exchange-exporter as a Windows service on the BEMS host (docs/deployment.md, "Windows
# service on the BEMS host"). Run it in an elevated PowerShell:
#
#   .\install.ps1 -Wheel C:\install\bems_exchange_exporter-0.1.0-py3-none-any.whl
#
# Why the paths and ACLs below: the service runs whatever is in its venv, and it reads the BEMS service
# account's password. A directory created at the root of C:\ inherits "Authenticated Users: Modify" on
# its subfolders and files, and one under C:\ProgramData inherits "Users: write" on new files: any local
# user could then replace the venv's python.exe (and run code as the service) or drop a config.yml. So
# the program goes under Program Files (writable by Administrators and SYSTEM only), and every directory
# this script creates has its inherited ACL replaced by an explicit one.
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)] [string] $Wheel,
    [string] $Python = "$env:ProgramFiles\Python311\python.exe",
    [string] $ServiceName = "bems-exchange-exporter",
    [string[]] $PrometheusAddresses = @("10.0.0.10", "10.0.0.11"),
    [string] $WheelDirectory = ""   # an offline host: --no-index --find-links this directory
)
$ErrorActionPreference = "Stop"

$ProgramDir = Join-Path $env:ProgramFiles "bems-exchange-exporter"
$Venv = Join-Path $ProgramDir "venv"
$DataDir = Join-Path $env:ProgramData "bems-exchange-exporter"
$Secrets = Join-Path $DataDir "secrets"
$Logs = Join-Path $DataDir "logs"
$Account = "NT SERVICE\$ServiceName"
$Exe = Join-Path $Venv "Scripts\bems-exchange-exporter.exe"

function New-PrivateDirectory([string] $Path, [string[]] $Grants) {
    # The directory, with an explicit ACL: /inheritance:r drops every inherited entry, /grant:r replaces
    # the listed principals' entries. Administrators and SYSTEM keep full control; nobody else gets
    # anything not listed.
    New-Item -ItemType Directory -Force $Path | Out-Null
    & icacls.exe $Path /inheritance:r /grant:r "*S-1-5-32-544:(OI)(CI)F" "*S-1-5-18:(OI)(CI)F" @Grants | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "icacls $Path failed ($LASTEXITCODE)" }
}

# 1. The program: a venv under Program Files, read-only for the service.
# Users (S-1-5-32-545): read and execute, never write.
New-PrivateDirectory $ProgramDir @("*S-1-5-32-545:(OI)(CI)RX")
& $Python -m venv $Venv
if ($LASTEXITCODE -ne 0) { throw "python -m venv failed ($LASTEXITCODE)" }
$PipArgs = @("install", "--upgrade", $Wheel)
if ($WheelDirectory) { $PipArgs += @("--no-index", "--find-links", $WheelDirectory) }
& (Join-Path $Venv "Scripts\pip.exe") @PipArgs
if ($LASTEXITCODE -ne 0) { throw "pip install failed ($LASTEXITCODE)" }

# 2. The service, so that its virtual account exists before the ACLs name it.
& nssm.exe install $ServiceName $Exe
& nssm.exe set $ServiceName AppParameters "--config.file=`"$DataDir\config.yml`" --web.listen-address=:10442"
& nssm.exe set $ServiceName AppDirectory $DataDir
& nssm.exe set $ServiceName DisplayName "BEMS Exchange Exporter"
& nssm.exe set $ServiceName Description "Prometheus exporter checking the Exchange prerequisites of BEMS"
& nssm.exe set $ServiceName Start SERVICE_DELAYED_AUTO_START
& nssm.exe set $ServiceName AppStdout "$Logs\exporter.log"
& nssm.exe set $ServiceName AppStderr "$Logs\exporter.log"
& nssm.exe set $ServiceName AppRotateFiles 1
& nssm.exe set $ServiceName AppRotateOnline 1
& nssm.exe set $ServiceName AppRotateBytes 10485760
& nssm.exe set $ServiceName AppStopMethodConsole 10000
& nssm.exe set $ServiceName AppExit Default Restart
& sc.exe config $ServiceName obj= $Account
& sc.exe failure $ServiceName reset= 86400 actions= restart/5000/restart/5000/restart/60000
& sc.exe failureflag $ServiceName 1

# 3. Configuration, secrets and logs under ProgramData, each with an explicit ACL.
New-PrivateDirectory $DataDir @("${Account}:(OI)(CI)RX")
New-PrivateDirectory $Secrets @("${Account}:(OI)(CI)R")
New-PrivateDirectory $Logs @("${Account}:(OI)(CI)M")

# 4. The web port for Prometheus only.
New-NetFirewallRule -DisplayName "BEMS Exchange Exporter (Prometheus)" -Direction Inbound -Protocol TCP `
    -LocalPort 10442 -RemoteAddress $PrometheusAddresses -Action Allow -Profile Domain | Out-Null

Write-Host "Installed. Put config.yml in $DataDir and the secret files in $Secrets, check with"
Write-Host "  & `"$Exe`" --config.file=`"$DataDir\config.yml`" --config.check"
Write-Host "then: Start-Service $ServiceName"
