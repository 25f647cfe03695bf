// A Function App on a Flex Consumption plan: Python 3.11, a user-assigned managed identity
// for storage, Key Vault and Application Insights, and no keys or connection strings with
// secrets in its settings. main.bicep deploys it twice from the same package: the `api` app
// (function_app.py: /talk, /health, Durable Functions) and the `stream` app (stream_app.py,
// chosen by the PYTHON_SCRIPT_FILE_NAME setting main.bicep passes: POST /talk/stream).

@description('Name of the Function App.')
param name string

@description('Location of the Function App.')
param location string = resourceGroup().location

@description('Tags; azd-service-name is added so `azd deploy` finds the app.')
param tags object = {}

@description('The azure.yaml service deployed to this app: azd finds the app by its azd-service-name tag, which must be unique among the resource group\'s sites.')
@allowed([
  'api'
  'stream'
])
param serviceName string = 'api'

@description('Resource id of the Flex Consumption (FC1) plan.')
param appServicePlanId string

@description('Storage account behind AzureWebJobsStorage and the deployment package.')
param storageAccountName string

@description('Blob container the deployment package is uploaded to.')
param deploymentStorageContainerName string

@description('Resource id of the user-assigned managed identity.')
param identityId string

@description('Client id of the user-assigned managed identity.')
param identityClientId string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Resource id of the Log Analytics workspace that receives the Function App\'s resource logs (FunctionAppLogs); empty sends none.')
param logAnalyticsWorkspaceId string = ''

@description('App settings from main.bicep; the identity-based connection settings below are added to them.')
param appSettings object = {}

@description('Memory of each instance, in MB (2048 or 4096: the models need more than 512).')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Most instances the app scales out to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Always-ready instances of the http group (the HTTP functions); 0 disables them.')
@minValue(0)
param httpAlwaysReadyInstances int = 1

@description('Always-ready instances of the durable group (orchestrator and activities, where the models load); 0 disables them (an app without Durable functions has no durable group to keep warm).')
@minValue(0)
param durableAlwaysReadyInstances int = 1

@description('Origins allowed to call the app from a browser; never "*".')
param corsAllowedOrigins array = []

@description('Python version of the Functions runtime.')
param runtimeVersion string = '3.11'

// Flex Consumption's per-function scaling groups: `http` serves the HTTP functions, `durable`
// runs the orchestrator and the activities (and so loads the models).
var httpAlwaysReady = httpAlwaysReadyInstances > 0 ? [{ name: 'http', instanceCount: httpAlwaysReadyInstances }] : []
var durableAlwaysReady = durableAlwaysReadyInstances > 0 ? [{ name: 'durable', instanceCount: durableAlwaysReadyInstances }] : []

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_17: callers authenticate with the function key over TLS; requiring client certificates would break every caller.
  // checkov:skip=CKV_AZURE_222: a public HTTP API on Flex Consumption without a virtual network; /talk is protected by its function key.
  // checkov:skip=CKV_AZURE_212: siteConfig.numberOfWorkers does not apply to Flex Consumption; the platform scales out and alwaysReady keeps warm instances.
  // checkov:skip=CKV_AZURE_213: App Service health check (healthCheckPath) is a Premium/Dedicated-plan feature; on Flex Consumption the platform manages instances, and /health stays available for external probes.
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: appServicePlanId
    httpsOnly: true
    clientAffinityEnabled: false
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      cors: {
        allowedOrigins: corsAllowedOrigins
        supportCredentials: false
      }
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentStorageContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        alwaysReady: concat(httpAlwaysReady, durableAlwaysReady)
      }
      runtime: {
        name: 'python'
        version: runtimeVersion
      }
    }
  }
}

// The whole app-settings set: what main.bicep passes plus the identity-based connections.
// AzureWebJobsStorage needs blob, queue and table because Durable Functions keeps its
// history and work items in tables and queues.
resource functionAppSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov treats every Microsoft.Web/sites/config as the 'web' config. This one is
  // 'appsettings' (only name/value pairs), so the 'web'-config checks below do not apply here.
  // checkov:skip=CKV_AZURE_13: /health is anonymous by design and /talk needs a function key; App Service Authentication (EasyAuth) would demand an Entra sign-in for both.
  // checkov:skip=CKV_AZURE_63: not a 'web' config; HTTP logs go to Application Insights through APPLICATIONINSIGHTS_CONNECTION_STRING.
  // checkov:skip=CKV_AZURE_65: not a 'web' config; detailed error pages are a 'web' config setting.
  // checkov:skip=CKV_AZURE_66: not a 'web' config; request tracing is a 'web' config setting, and requests are traced in Application Insights.
  // checkov:skip=CKV_AZURE_80: not a 'web' config, and the app is Python, not .NET.
  // checkov:skip=CKV_AZURE_88: not a 'web' config; the app mounts no Azure Files share (Flex Consumption uses blob deployment storage).
  // checkov:skip=CKV_AZURE_222: not a 'web' config; public network access is set on the site (see its skip).
  parent: functionApp
  name: 'appsettings'
  properties: union(appSettings, {
    AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
    AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
    AzureWebJobsStorage__tableServiceUri: storage.properties.primaryEndpoints.table
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identityClientId
    APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  })
}

// The Functions host's and the worker's log stream as platform resource logs (the
// FunctionAppLogs table of the workspace). Application Insights receives much the same lines,
// but only while the app's identity can publish to it (its local auth is off) and after
// sampling; these come through the platform whatever the app's identity or telemetry set-up,
// so a host that fails to start or to authenticate still leaves a trace. Volume follows
// invocations (a few lines each at host.json's levels), not time. FunctionAppLogs is the
// category for Functions; not the allLogs group, whose App Service categories (HTTP, console,
// platform, authentication logs) would repeat the requests and output Application Insights
// already has, billed again per GB, and no metrics (the platform keeps them for 93 days
// without charge).
resource functionAppDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsWorkspaceId)) {
  name: 'function-logs-to-log-analytics'
  scope: functionApp
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'FunctionAppLogs'
        enabled: true
      }
    ]
  }
}

// Publishing goes through Entra ID (azd uses a bearer token), so basic-auth
// publishing credentials for FTP and the SCM site are switched off.
resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

@description('Name of the Function App.')
output name string = functionApp.name

@description('Default host name, e.g. func-api-xyz.azurewebsites.net.')
output defaultHostname string = functionApp.properties.defaultHostName
