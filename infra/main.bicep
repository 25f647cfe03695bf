// Azure infrastructure for the talk backend (function_app.py): a Python 3.11 Function App
// on Flex Consumption with Durable Functions, identity-based storage, Key Vault secrets and
// Application Insights, all reached through one user-assigned managed identity.
// Deploy with `azd up`; parameters come from main.parameters.json.
targetScope = 'subscription'

// ---------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; it seeds the unique suffix of every resource name.')
param environmentName string

@minLength(1)
@description('Primary location for all resources: a region that offers Flex Consumption Function Apps (the list of Azure\'s Flex Consumption azd samples).')
@allowed([
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
])
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of the user (or CI principal) running azd; it gets data-plane roles for local debugging and to set Key Vault secrets. Leave empty to assign none.')
param principalId string = ''

@description('Principal type of principalId.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

// Optional name overrides; empty derives a name from the abbreviations and resourceToken.
@description('Resource group name; empty uses rg-<environmentName>.')
param resourceGroupName string = ''

@description('Function App name; empty derives one.')
param functionAppName string = ''

@description('Flex Consumption plan name; empty derives one.')
param appServicePlanName string = ''

@description('Name of the streaming Function App (stream_app.py, POST /talk/stream); empty derives one. Its first 32 characters must differ from functionAppName\'s: the two apps share the storage account, where the Functions host keeps its state under its host id, the first 32 characters of the app\'s name.')
param streamFunctionAppName string = ''

@description('Flex Consumption plan name of the streaming app (a Flex plan hosts one app); empty derives one.')
param streamAppServicePlanName string = ''

@description('Storage account name (3-24 lower-case letters and digits); empty derives one.')
param storageAccountName string = ''

@description('Key Vault name; empty derives one. A deleted vault keeps its name through its 90-day soft-delete retention: see keyVaultCreateMode.')
param keyVaultName string = ''

@description('User-assigned managed identity name; empty derives one.')
param identityName string = ''

@description('Log Analytics workspace name; empty derives one.')
param logAnalyticsName string = ''

@description('Application Insights name; empty derives one.')
param applicationInsightsName string = ''

// ---------------------------------------------------------------------------------------
// Hosting
// ---------------------------------------------------------------------------------------

@description('Memory of each Function App instance, in MB. 2048 holds WHISPER_MODEL base with the fallback Piper voice (550 MB peak measured at 4 concurrent requests; 950 MB with the embedded LLM too); 4096 for a larger model or more concurrency. 512 cannot hold the models.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Most instances the Function App scales out to (Flex Consumption allows 40 to 1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Always-ready instances of the http group (POST /talk, GET /health): they take the request at once instead of a cold start. Each is billed for its memory around the clock; 0 disables them.')
@minValue(0)
param httpAlwaysReadyInstances int = 1

@description('Always-ready instances of the durable group (the orchestrator and the transcribe, generate and synthesize activities, where the models load): Durable Functions on Flex Consumption asks for at least 1. Each is billed for its memory around the clock; 0 disables them.')
@minValue(0)
param durableAlwaysReadyInstances int = 1

@description('Always-ready instances of the streaming app\'s http group (POST /talk/stream, its GET /health): the stream starts without a cold start of the host and the models, which would cost more than streaming saves. Billed like the others; 0 disables them (an environment whose clients do not stream). The streaming app has no Durable functions, so no durable group.')
@minValue(0)
param streamAlwaysReadyInstances int = 1

// One of the TimeSpans docs/deploy.md's table weighs, not any string: the host reads it as a
// TimeSpan at start-up, and a malformed one stops the host rather than this deployment.
@description('Durable Functions: the longest an idle task hub waits between polls of its five queues (maxQueuePollingInterval). Shorter answers the first question after a quiet spell sooner and costs more queue transactions: docs/deploy.md has the table.')
@allowed([
  '00:00:00.1'
  '00:00:00.5'
  '00:00:01'
  '00:00:05'
  '00:00:30'
])
param durableMaxQueuePollingInterval string = '00:00:00.5'

@description('TTS_DAILY_CHARACTER_BUDGET: characters a day ElevenLabs may speak across all instances; 0 for no limit. When spent: the embedded voice (ttsFallback piper) or 503 until midnight UTC.')
@minValue(0)
param ttsDailyCharacterBudget int = 0

@description('LLM_DAILY_TOKEN_BUDGET: tokens a day the remote LLM may use across all instances; 0 for no limit. When spent: 503 until midnight UTC.')
@minValue(0)
param llmDailyTokenBudget int = 0

@description('STT_DAILY_SECONDS_BUDGET: seconds of speech a day the remote STT (sttProvider huggingface) may transcribe across all instances; 0 for no limit. When spent: the local Whisper model transcribes until midnight UTC.')
@minValue(0)
param sttDailySecondsBudget int = 0

@description('ELEVENLABS_MAX_IN_FLIGHT: ElevenLabs requests one instance keeps in flight. The account allows Free 2, Starter 3, Creator 5, Pro 10, Scale and Business 15 at once across all instances: docs/operations.md has the capacity table.')
@minValue(1)
param elevenlabsMaxInFlight int = 4

@description('E-mail address for the alerts (5xx ratio, slow round trip, provider 429s, Key Vault or storage failures); empty deploys no alerts.')
param alertEmail string = ''

@description('Days a blob in the talk-audio container lives before the lifecycle rule deletes it.')
@minValue(1)
@maxValue(365)
param audioRetentionDays int = 7

@description('Hours a cached reply or its speech is reused; the cache container\'s lifecycle rule deletes entries a day or so later.')
@minValue(1)
param cacheTtlHours int = 168

@description('Reuse synthesized speech for a repeated reply: on or off.')
@allowed([
  'on'
  'off'
])
param ttsCache string = 'on'

@description('Reuse the reply to a repeated question (never within a conversation): on or off.')
@allowed([
  'on'
  'off'
])
param llmCache string = 'off'

@description('Browser origins allowed to call the API (CORS), comma-separated (azd env set turns no string into an array), e.g. \'https://app.example.com,https://admin.example.com\'. Empty, or a list with \'*\' in it, allows no cross-origin browser calls.')
param corsAllowedOrigins string = ''

@description('Redundancy of the storage account.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSkuName string = 'Standard_LRS'

@description('Purge protection on the Key Vault: a deleted vault (and its secrets) cannot be purged for 90 days. On for production; set false for development environments that are torn down and re-created (it cannot be turned off once on).')
param keyVaultPurgeProtection bool = true

@description('default creates the Key Vault; recover brings back a soft-deleted vault of the same name (after `azd down` without --purge, or with purge protection on), then set it back to default.')
@allowed([
  'default'
  'recover'
])
param keyVaultCreateMode string = 'default'

@description('Send Azure Verified Modules usage telemetry to Microsoft (a deployment named 46d3xbcp.* per module).')
param enableTelemetry bool = true

// The values Application Insights accepts too (AVM insights/component 0.4.1,
// retentionInDays), which keeps the same days as the workspace.
@description('Days Log Analytics and Application Insights keep logs.')
@allowed([30, 60, 90, 120, 180, 270, 365, 550, 730])
param logRetentionDays int = 30

// ---------------------------------------------------------------------------------------
// App behaviour (see the settings table in README.md)
// ---------------------------------------------------------------------------------------

@description('LLM_PROVIDER: huggingface, openai (LLM_BASE_URL + LLM_MODEL), local, or auto.')
@allowed([
  'auto'
  'huggingface'
  'openai'
  'local'
])
param llmProvider string = 'huggingface'

@description('TTS_PROVIDER: elevenlabs, piper, or auto.')
@allowed([
  'auto'
  'elevenlabs'
  'piper'
])
param ttsProvider string = 'elevenlabs'

@description('TTS_FALLBACK: piper answers with the embedded voice when ElevenLabs fails; empty disables the fallback.')
@allowed([
  ''
  'piper'
])
param ttsFallback string = 'piper'

@description('STT_PROVIDER: local (the shipped Whisper model, in the app) or huggingface (Whisper large through the Hugging Face router with hf-api-token; the local model still finds the speech and its language, and transcribes when the router fails). docs/languages.md has the trade-off.')
@allowed([
  'local'
  'huggingface'
])
param sttProvider string = 'local'

@description('HF_STT_MODEL: the Hugging Face speech-recognition model used when sttProvider is huggingface.')
param hfSttModel string = 'openai/whisper-large-v3-turbo'

@description('WHISPER_MODEL: base (multilingual, shipped with the app, the default: Finnish and English) or tiny.en (English only, faster, also shipped). Other names are downloaded on first use and are refused unless WHISPER_ALLOW_DOWNLOAD is on.')
@allowed([
  'base'
  'tiny.en'
])
param whisperModel string = 'base'

@description('LANGUAGES: the languages the users speak, comma-separated; speech is recognised as one of these.')
param languages string = 'fi,en'

@description('HF_MODEL: Hugging Face chat model used when llmProvider is huggingface.')
param hfModel string = 'meta-llama/Llama-3.1-8B-Instruct'

@description('LLM_BASE_URL: OpenAI-compatible endpoint used when llmProvider is openai.')
param llmBaseUrl string = ''

@description('LLM_MODEL: model name at llmBaseUrl, used when llmProvider is openai.')
param llmModel string = ''

@description('VOICE_ID: default ElevenLabs voice id.')
param voiceId string = 'EXAVITQu4vr4xnSDxMaL'

@description('VOICES: persona names to ElevenLabs voice ids, e.g. Kim=<id>,Milla=<id>; empty keeps the app default (the Android app\'s Kim, Milla, John and Lily as ElevenLabs default voices).')
param voices string = ''

@description('SYSTEM_PROMPT: system prompt for the reply; empty leaves the app\'s built-in prompt (the setting is then not written at all).')
param systemPrompt string = ''

@description('AUTH_MODE: key (the function key only, as the Android app ships) or jwt (also a bearer token from authIssuer; each caller\'s data is theirs alone).')
@allowed([
  'key'
  'jwt'
])
param authMode string = 'key'

@description('AUTH_ISSUER: OpenID Connect issuer of the bearer tokens when authMode is jwt, e.g. https://login.microsoftonline.com/<tenant id>/v2.0.')
param authIssuer string = ''

@description('AUTH_AUDIENCE: audience the bearer tokens must be for when authMode is jwt, e.g. api://talk-backend.')
param authAudience string = ''

@description('AUTH_REQUIRED_SCOPE: delegated scope a bearer token must carry when authMode is jwt, e.g. Talk.Use (jwt needs this or authRequiredRole).')
param authRequiredScope string = ''

@description('AUTH_REQUIRED_ROLE: app role a bearer token may carry instead of the scope when authMode is jwt; empty for none.')
param authRequiredRole string = ''

@description('AUTH_ALLOWED_CLIENTS: comma-separated client ids the bearer tokens must be issued to (azp/appid), e.g. the mobile app\'s; empty allows any.')
param authAllowedClients string = ''

@description('CLIENT_SYSTEM_PROMPT: what a request\'s system_prompt does: ignore, append (a capped preference), or replace (trusted single-tenant set-ups only).')
@allowed([
  'ignore'
  'append'
  'replace'
])
param clientSystemPrompt string = 'ignore'

@description('ALLOW_VOICE_IDS: on lets a request name any ElevenLabs voice id, not only a VOICES persona.')
@allowed([
  'on'
  'off'
])
param allowVoiceIds string = 'off'

@description('RATE_LIMIT_PER_MINUTE: writes (POST /talk, the DELETEs) per signed-in caller per minute (authMode jwt); 0 for no limit.')
@minValue(0)
param rateLimitPerMinute int = 20

@description('RATE_LIMIT_PER_DAY: writes (POST /talk, the DELETEs) per signed-in caller per day (authMode jwt); 0 for no limit.')
@minValue(0)
param rateLimitPerDay int = 500

@description('RATE_LIMIT_PER_ADDRESS_PER_MINUTE: writes (POST /talk, the DELETEs) per client address per minute; a ceiling that protects the provider accounts (carrier NAT puts many phones behind one address); 0 for no limit.')
@minValue(0)
param rateLimitPerAddressPerMinute int = 120

// ---------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------

var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }

var resolvedFunctionAppName = !empty(functionAppName) ? functionAppName : '${abbrs.webSitesFunctions}api-${resourceToken}'
var deploymentContainerName = 'app-package-${resourceToken}'
// The streaming app's own deployment container: Flex Consumption keeps an app's package as
// one blob of a fixed name in its container, so two apps sharing one would overwrite each
// other's package (a deploy of one would change what the other starts on its next instance).
var resolvedStreamFunctionAppName = !empty(streamFunctionAppName) ? streamFunctionAppName : '${abbrs.webSitesFunctions}stream-${resourceToken}'
var streamDeploymentContainerName = 'app-package-stream-${resourceToken}'
var talkContainerName = 'talk-audio'
// The largest upload the app takes (MAX_AUDIO_BYTES). The host refuses bodies a little
// over it (room for the multipart framing and text fields), so a bigger one is cut at the
// front door instead of being read into memory.
var maxAudioBytes = 10000000
var maxTextBodyBytes = 65536
// CORS origins from the comma-separated parameter (origins hold no spaces). A list with the
// '*' wildcard in it allows no origin at all rather than every one.
var corsOriginList = replace(corsAllowedOrigins, ' ', '')
var corsOrigins = empty(corsOriginList) || contains(split(corsOriginList, ','), '*') ? [] : split(corsOriginList, ',')
var cacheContainerName = 'talk-cache'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

// ---------------------------------------------------------------------------------------
// Identity, plan, storage, monitoring, Key Vault
// ---------------------------------------------------------------------------------------

// The one identity the app uses for storage, Key Vault and Application Insights.
module identity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = {
  name: 'identity'
  scope: rg
  params: {
    name: !empty(identityName) ? identityName : '${abbrs.managedIdentityUserAssignedIdentities}api-${resourceToken}'
    location: location
    enableTelemetry: enableTelemetry
    tags: tags
  }
}

module appServicePlan 'br/public:avm/res/web/serverfarm:0.1.1' = {
  name: 'app-service-plan'
  scope: rg
  params: {
    name: !empty(appServicePlanName) ? appServicePlanName : '${abbrs.webServerFarms}${resourceToken}'
    location: location
    enableTelemetry: enableTelemetry
    tags: tags
    sku: {
      name: 'FC1'
      tier: 'FlexConsumption'
    }
    reserved: true
  }
}

// The streaming app's plan: a Flex Consumption plan takes one app ("There can only be one
// site per Flex Consumption serverfarm"). A plan costs nothing by itself; its app is billed.
module streamAppServicePlan 'br/public:avm/res/web/serverfarm:0.1.1' = {
  name: 'app-service-plan-stream'
  scope: rg
  params: {
    name: !empty(streamAppServicePlanName) ? streamAppServicePlanName : '${abbrs.webServerFarms}stream-${resourceToken}'
    location: location
    enableTelemetry: enableTelemetry
    tags: tags
    sku: {
      name: 'FC1'
      tier: 'FlexConsumption'
    }
    reserved: true
  }
}

// Shared-key access is off: everything (the host, Durable Functions, the deployment
// package, the app's own talk-audio blobs) authenticates with the managed identity.
//
// Diagnostic settings go to the Log Analytics workspace (shapes checked against tag
// avm/res/storage/storage-account/0.32.0: the account's diagnosticSettings take metrics
// only; blobServices, tableServices and queueServices each take a diagnosticSettings list).
// - Blob and table services: the StorageWrite and StorageDelete resource logs only: who
//   wrote or deleted a recording, a cached reply, a conversation or the state of Durable
//   Functions, with the caller's identity, and every refused write. Their steady background
//   (lease renewals of the host's lock and of the Durable partitions, every few seconds) is
//   in the order of a million rows, a few GB, a month.
// - No StorageRead: reads are the bulk of the traffic (every talk request reads blobs and
//   tables) and have the least audit value for their cost.
// - No queue service logs at all: Durable Functions polls its five queues up to twice a
//   second each when idle (maxQueuePollingInterval 0.5 s: some 26 million reads a month,
//   tens of GB of StorageQueueLogs), and its queue writes are the work items Application
//   Insights already traces.
// - Categories are named, never left out, and no category group: the service modules fall
//   back to the allLogs group and AllMetrics when logCategoriesAndGroups or metricCategories
//   is missing; allLogs takes in StorageRead, and a group is whatever Azure puts in it.
module storage 'br/public:avm/res/storage/storage-account:0.32.0' = {
  name: 'storage'
  scope: rg
  params: {
    name: !empty(storageAccountName) ? storageAccountName : '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    enableTelemetry: enableTelemetry
    tags: tags
    kind: 'StorageV2'
    skuName: storageSkuName
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    dnsEndpointType: 'Standard'
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    // Account level: metrics only (the module takes no logs here), the Transaction ones:
    // requests, errors, latency and availability by API, once for all services.
    diagnosticSettings: [
      {
        name: 'transactions-to-log-analytics'
        workspaceResourceId: monitoring.outputs.logAnalyticsWorkspaceId
        metricCategories: [
          {
            category: 'Transaction'
          }
        ]
      }
    ]
    blobServices: {
      // Soft delete guards against deleting by mistake; note that a recording removed by
      // the lifecycle rule below stays recoverable (soft-deleted) for these 7 more days.
      containerDeleteRetentionPolicyEnabled: true
      containerDeleteRetentionPolicyDays: 7
      deleteRetentionPolicyEnabled: true
      deleteRetentionPolicyDays: 7
      containers: [
        {
          name: deploymentContainerName
          publicAccess: 'None'
        }
        {
          name: streamDeploymentContainerName
          publicAccess: 'None'
        }
        {
          name: talkContainerName
          publicAccess: 'None'
        }
        {
          name: cacheContainerName
          publicAccess: 'None'
        }
      ]
      diagnosticSettings: [
        {
          name: 'writes-deletes-to-log-analytics'
          workspaceResourceId: monitoring.outputs.logAnalyticsWorkspaceId
          logCategoriesAndGroups: [
            {
              category: 'StorageWrite'
            }
            {
              category: 'StorageDelete'
            }
          ]
          metricCategories: []
        }
      ]
    }
    // Only for its diagnostic settings: the host and Durable Functions create their tables,
    // and the app its conversations table, at run time.
    tableServices: {
      diagnosticSettings: [
        {
          name: 'writes-deletes-to-log-analytics'
          workspaceResourceId: monitoring.outputs.logAnalyticsWorkspaceId
          logCategoriesAndGroups: [
            {
              category: 'StorageWrite'
            }
            {
              category: 'StorageDelete'
            }
          ]
          metricCategories: []
        }
      ]
    }
    // No queueServices: see the note above the module.
    // Uploaded questions and spoken replies are transient: delete them after
    // audioRetentionDays. prefixMatch starts with the container name.
    managementPolicyRules: [
      {
        name: 'delete-old-talk-audio'
        enabled: true
        type: 'Lifecycle'
        definition: {
          filters: {
            blobTypes: [
              'blockBlob'
              'appendBlob'
            ]
            prefixMatch: [
              '${talkContainerName}/'
            ]
          }
          actions: {
            baseBlob: {
              delete: {
                daysAfterModificationGreaterThan: audioRetentionDays
              }
            }
          }
        }
      }
      {
        // Cached speech and replies: the app stops using an entry after cacheTtlHours.
        name: 'delete-old-cache-entries'
        enabled: true
        type: 'Lifecycle'
        definition: {
          filters: {
            blobTypes: [
              'blockBlob'
            ]
            prefixMatch: [
              '${cacheContainerName}/'
            ]
          }
          actions: {
            baseBlob: {
              delete: {
                daysAfterModificationGreaterThan: (cacheTtlHours + 23) / 24
              }
            }
          }
        }
      }
    ]
  }
}

module monitoring './app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: !empty(logAnalyticsName) ? logAnalyticsName : '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: !empty(applicationInsightsName) ? applicationInsightsName : '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
    logRetentionDays: logRetentionDays
    enableTelemetry: enableTelemetry
  }
}

module dashboard './app/dashboard.bicep' = {
  name: 'dashboard'
  scope: rg
  params: {
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    location: location
    tags: tags
  }
}

module alerts './app/alerts.bicep' = if (!empty(alertEmail)) {
  name: 'alerts'
  scope: rg
  params: {
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    alertEmail: alertEmail
    namePrefix: 'talk-${resourceToken}'
    location: location
    tags: tags
  }
}

module keyVault './app/keyvault.bicep' = {
  name: 'key-vault'
  scope: rg
  params: {
    name: !empty(keyVaultName) ? keyVaultName : '${abbrs.keyVaultVaults}${resourceToken}'
    location: location
    tags: tags
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    enablePurgeProtection: keyVaultPurgeProtection
    createMode: keyVaultCreateMode
    enableTelemetry: enableTelemetry
  }
}

module rbac './app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    managedIdentityPrincipalId: identity.outputs.principalId
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
}

// ---------------------------------------------------------------------------------------
// Function App
// ---------------------------------------------------------------------------------------

// Every app setting except the identity-based AzureWebJobsStorage__* and
// APPLICATIONINSIGHTS_* connections, which api.bicep adds. An empty value means the app's
// default (an empty SYSTEM_PROMPT keeps the built-in prompt). Provider secrets are not here: the app reads hf-api-token, elevenlabs-api-key and
// llm-api-key from KEY_VAULT_URL as AZURE_CLIENT_ID.
var appSettings = {
  KEY_VAULT_URL: keyVault.outputs.uri
  AZURE_CLIENT_ID: identity.outputs.clientId
  LLM_PROVIDER: llmProvider
  HF_MODEL: hfModel
  HF_BASE_URL: 'https://router.huggingface.co/v1'
  LLM_BASE_URL: llmBaseUrl
  LLM_MODEL: llmModel
  LOCAL_LLM_PATH: '' // empty: the embedded model the app ships with
  LOCAL_LLM_LANGUAGES: 'en' // what it knows (docs/languages.md)
  TTS_PROVIDER: ttsProvider
  TTS_FALLBACK: ttsFallback
  PIPER_VOICE_PATH: '' // empty: the embedded Piper voice the app ships with
  ELEVENLABS_BASE_URL: 'https://api.elevenlabs.io'
  ELEVENLABS_MODEL: 'eleven_flash_v2_5'
  ELEVENLABS_OUTPUT_FORMAT: 'mp3_22050_32'
  ELEVENLABS_STABILITY: '0.5'
  ELEVENLABS_SIMILARITY_BOOST: '0.8'
  VOICE_ID: voiceId
  VOICES: voices
  STT_ENGINE: 'faster-whisper'
  STT_PROVIDER: sttProvider
  HF_STT_MODEL: hfSttModel
  HF_STT_BASE_URL: 'https://router.huggingface.co/hf-inference/models'
  WHISPER_MODEL: whisperModel
  WHISPER_ALLOW_DOWNLOAD: 'off' // a model downloaded at cold start is a slow, fragile start
  MODEL_CACHE_DIR: '' // empty: the instance's temp directory, where base is put back together
  LANGUAGES: languages
  PIPER_VOICES: '' // none shipped beyond the default voice: set paths of voices you deploy
  WHISPER_COMPUTE_TYPE: 'int8'
  WHISPER_BEAM_SIZE: '1'
  WHISPER_LANGUAGE: ''
  MAX_AUDIO_BYTES: string(maxAudioBytes)
  MAX_TEXT_BODY_BYTES: string(maxTextBodyBytes)
  FUNCTIONS_REQUEST_BODY_SIZE_LIMIT: string(maxAudioBytes + 2 * maxTextBodyBytes)
  MAX_AUDIO_SECONDS: '120'
  MAX_STT_CPU_SECONDS: '40'
  MAX_TEXT_CHARS: '4000'
  LLM_MAX_TOKENS: '120'
  LLM_TEMPERATURE: '0.7'
  REPLY_MAX_SENTENCES: '3'
  MP3_BITRATE_KBPS: '48'
  HTTP_CONNECT_TIMEOUT_SECONDS: '5'
  HTTP_TIMEOUT_SECONDS: '30'
  HTTP_RETRIES: '2'
  HTTP_BACKOFF_SECONDS: '0.5'
  HTTP_MAX_RETRY_AFTER_SECONDS: '10'
  SECRET_TTL_SECONDS: '300'
  TALK_CONTAINER: talkContainerName
  TALK_WAIT_SECONDS: '60'
  DUPLICATE_WINDOW_SECONDS: '120'
  SYSTEM_PROMPT: systemPrompt
  LOG_LEVEL: 'INFO'
  CONVERSATION_TURNS: '6'
  CONVERSATION_MAX_TURNS: '50'
  CONVERSATION_TTL_HOURS: '24'
  CONVERSATION_TABLE: 'conversations'
  TALK_CACHE_CONTAINER: cacheContainerName
  TTS_CACHE: ttsCache
  LLM_CACHE: llmCache
  CACHE_TTL_HOURS: string(cacheTtlHours)
  AUDIO_RETENTION_DAYS: string(audioRetentionDays)
  AUTH_MODE: authMode
  AUTH_ISSUER: authIssuer
  AUTH_AUDIENCE: authAudience
  AUTH_REQUIRED_SCOPE: authRequiredScope
  AUTH_REQUIRED_ROLE: authRequiredRole
  AUTH_ALLOWED_CLIENTS: authAllowedClients
  CLIENT_SYSTEM_PROMPT: clientSystemPrompt
  ALLOW_VOICE_IDS: allowVoiceIds
  RATE_LIMIT_PER_MINUTE: string(rateLimitPerMinute)
  RATE_LIMIT_PER_DAY: string(rateLimitPerDay)
  RATE_LIMIT_PER_ADDRESS_PER_MINUTE: string(rateLimitPerAddressPerMinute)
  RATE_LIMIT_PER_ADDRESS_PER_DAY: '2000'
  RATE_LIMIT_READS_PER_MINUTE: '120'
  RATE_LIMIT_READS_PER_ADDRESS_PER_MINUTE: '600'
  TTS_DAILY_CHARACTER_BUDGET: string(ttsDailyCharacterBudget)
  LLM_DAILY_TOKEN_BUDGET: string(llmDailyTokenBudget)
  STT_DAILY_SECONDS_BUDGET: string(sttDailySecondsBudget)
  BUDGET_SHARE_PER_CALLER: '0.1'
  ELEVENLABS_MAX_IN_FLIGHT: string(elevenlabsMaxInFlight)
  // Traces and metrics go to Application Insights (its connection string comes from
  // api.bicep); no transcript or reply is recorded.
  TELEMETRY_EXPORTER: 'auto'
  LOG_CONTENT: 'off'
  // Overrides host.json's value, so the trade-off is a deployment parameter.
  AzureFunctionsJobHost__extensions__durableTask__storageProvider__maxQueuePollingInterval: durableMaxQueuePollingInterval
}

module api './app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: resolvedFunctionAppName
    location: location
    tags: tags
    appServicePlanId: appServicePlan.outputs.resourceId
    storageAccountName: storage.outputs.name
    deploymentStorageContainerName: deploymentContainerName
    identityId: identity.outputs.resourceId
    identityClientId: identity.outputs.clientId
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    appSettings: appSettings
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    httpAlwaysReadyInstances: httpAlwaysReadyInstances
    durableAlwaysReadyInstances: durableAlwaysReadyInstances
    corsAllowedOrigins: corsOrigins
    runtimeVersion: '3.11'
  }
  // The identity must hold its storage roles before the host starts and before azd
  // uploads the package; Key Vault and App Insights roles before the first request.
  dependsOn: [
    rbac
  ]
}

// The streaming app: the same package, started from stream_app.py (POST /talk/stream and its
// own /health), because the FastAPI HTTP-streams extension gives every HTTP function of an
// app FastAPI types, which function_app.py's functions do not take. It shares the identity
// (and so rbac's roles on the storage account, the Key Vault and Application Insights), the
// storage account and its containers and tables, and every app setting of the api app, plus
// PYTHON_SCRIPT_FILE_NAME (its entry file) and PYTHON_ENABLE_INIT_INDEXING (which the
// extension needs on Python 3.12 and earlier). No Durable functions: no durable group.
var streamAppSettings = union(appSettings, {
  PYTHON_SCRIPT_FILE_NAME: 'stream_app.py'
  PYTHON_ENABLE_INIT_INDEXING: '1'
})

module stream './app/api.bicep' = {
  name: 'stream'
  scope: rg
  params: {
    name: resolvedStreamFunctionAppName
    serviceName: 'stream'
    location: location
    tags: tags
    appServicePlanId: streamAppServicePlan.outputs.resourceId
    storageAccountName: storage.outputs.name
    deploymentStorageContainerName: streamDeploymentContainerName
    identityId: identity.outputs.resourceId
    identityClientId: identity.outputs.clientId
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    appSettings: streamAppSettings
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    httpAlwaysReadyInstances: streamAlwaysReadyInstances
    durableAlwaysReadyInstances: 0
    corsAllowedOrigins: corsOrigins
    runtimeVersion: '3.11'
  }
  dependsOn: [
    rbac
  ]
}

// ---------------------------------------------------------------------------------------
// Outputs (azd stores them in the environment's .env)
// ---------------------------------------------------------------------------------------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_NAME string = api.outputs.name
output FUNCTION_URL string = 'https://${api.outputs.defaultHostname}'
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_URL string = keyVault.outputs.uri
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_DEPLOYMENT_CONTAINER string = deploymentContainerName
output AZURE_STREAM_FUNCTION_NAME string = stream.outputs.name
output STREAM_FUNCTION_URL string = 'https://${stream.outputs.defaultHostname}'
output AZURE_STREAM_DEPLOYMENT_CONTAINER string = streamDeploymentContainerName
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
